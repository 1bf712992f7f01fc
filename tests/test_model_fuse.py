"""BatchNorm folding for inference, MobileNetV2's output stride, and the malloc tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FrozenBatchNorm2d

from sniper.config import ModelConfig
from sniper.errors import SniperError
from sniper.model import build_model
from sniper.model.backbones import build_backbone
from sniper.model.fuse import fuse_conv_bn, has_foldable_norms
from sniper.runtime import tune_malloc


def _randomise_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine terms, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (_BatchNorm, FrozenBatchNorm2d)):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (_BatchNorm, FrozenBatchNorm2d))]


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(pretrained=False, backbone="mobilenet_v2"),
        ModelConfig(pretrained=False, backbone="mobilenet_v2", output_stride=16),
        ModelConfig(pretrained=False, backbone="resnet50", norm="frozen_bn"),
    ],
    ids=["mobilenet_v2", "mobilenet_v2_s16", "resnet50_frozen_bn"],
)
@torch.no_grad()
def test_folded_backbone_matches_and_has_no_norms_left(cfg):
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    _randomise_norm_stats(backbone)
    backbone.eval()
    before = len(_norms(backbone))
    fused = fuse_conv_bn(backbone)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    ref, out = backbone(x), fused(x)
    assert list(ref) == list(out)
    for k in ref:
        # random statistics grow activations through 50 layers: tolerance relative to the scale
        assert (ref[k] - out[k]).abs().max() <= 1e-4 * ref[k].abs().max(), k
    assert before > 0 and _norms(fused) == []  # every norm in these backbones follows a conv
    assert has_foldable_norms(backbone) and not has_foldable_norms(fused)
    assert len(_norms(backbone)) == before  # the original is untouched


@torch.no_grad()
def test_fold_leaves_norms_that_do_not_follow_a_conv():
    seq = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    _randomise_norm_stats(seq)
    fused = fuse_conv_bn(seq)
    assert [type(m) for m in fused] == [nn.BatchNorm2d, nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(seq.eval()(x), fused(x))


@torch.no_grad()
def test_predictor_model_is_folded_and_detects_the_same():
    from sniper.config import InferConfig
    from sniper.engine.predict import Predictor
    from sniper.scales import Scale

    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained=False, anchor_sizes=[16, 32, 64], box_score_thresh=0.0), 2)
    _randomise_norm_stats(model.backbone)
    cats = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    cfg = InferConfig(scales=[Scale(factor=1.0)], merge="nms")
    image = torch.randint(0, 255, (3, 160, 192), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    plain = Predictor(model, cfg, cats, fuse_bn=False)
    folded = Predictor(model, cfg, cats)
    assert _norms(plain.model) and not _norms(folded.model)
    a, b = plain.predict([image])[0], folded.predict([image])[0]
    assert len(a.scores) > 0
    # Rounding may swap near-equal scores, so compare score lists and box sets, not positions.
    top = min(len(a.scores), len(b.scores), 20)
    assert torch.allclose(torch.as_tensor(a.scores[:top]), torch.as_tensor(b.scores[:top]), atol=1e-3)
    dist = torch.cdist(torch.as_tensor(a.boxes[:top]), torch.as_tensor(b.boxes), p=float("inf"))
    assert dist.min(dim=1).values.max() < 0.5


def test_output_stride_16_doubles_the_feature_resolution():
    feats = {s: build_backbone(ModelConfig(pretrained=False, output_stride=s)).eval()(torch.rand(1, 3, 128, 128))["0"] for s in (16, 32)}
    assert feats[32].shape[-2:] == (4, 4) and feats[16].shape[-2:] == (8, 8)
    assert build_backbone(ModelConfig(pretrained=False, output_stride=16)).strides == {"0": 16}
    with pytest.raises(SniperError, match="output_stride=8"):
        build_backbone(ModelConfig(pretrained=False, output_stride=8))
    with pytest.raises(SniperError, match="only for mobilenet_v2"):
        build_backbone(ModelConfig(pretrained=False, backbone="resnet50", output_stride=16))


def test_tune_malloc_can_be_declined(monkeypatch):
    monkeypatch.setenv("SNIPER_KEEP_MALLOC", "1")
    assert tune_malloc() is False
    monkeypatch.delenv("SNIPER_KEEP_MALLOC")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_malloc() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    import sys

    assert tune_malloc() is sys.platform.startswith("linux")
