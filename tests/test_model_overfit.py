"""A tiny SNIPER model must be able to learn: loss on 2 fixed chips falls clearly under SGD."""

from __future__ import annotations

import math

import torch

from sniper.config import ModelConfig
from sniper.model import build_model


def test_mobilenet_overfits_two_chips():
    torch.manual_seed(0)
    cfg = ModelConfig(pretrained=False, anchor_sizes=[16, 32, 64], head_channels=64, rpn_channels=64, fc_dim=128)
    model = build_model(cfg, num_classes=2)
    model.train()
    images = torch.zeros(2, 3, 96, 96)
    images[0, :, 10:50, 20:60] = 1.0  # a white square (class 1)
    images[1, 0, 40:90, 30:70] = 1.0  # a red rectangle (class 2)
    targets = [
        {
            "boxes": torch.tensor([[20.0, 10, 60, 50]]),
            "labels": torch.tensor([1]),
            "ignore_boxes": torch.zeros(0, 4),
            "valid_range": torch.tensor([0.0, math.inf]),
        },
        {
            "boxes": torch.tensor([[30.0, 40, 70, 90]]),
            "labels": torch.tensor([2]),
            "ignore_boxes": torch.tensor([[0.0, 0, 12, 12]]),
            "valid_range": torch.tensor([0.0, math.inf]),
        },
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    history = []
    for _ in range(35):
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = history[0], sum(history[-5:]) / 5
    assert all(math.isfinite(v) for v in history)
    assert last < 0.5 * first, history
