"""End-to-end behaviour of build_model: every backbone trains one step and predicts; rpn_only,
negative chips, many GT, freezing, norms, autocast, errors. Random init, tiny chips."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from sniper.config import ModelConfig
from sniper.errors import SniperError
from sniper.model import SniperFasterRCNN, build_model, convert_sync_batchnorm
from sniper.model.backbones import DeformableConv3x3

NUM_CLASSES = 3



RPN_LOSSES = {"loss_objectness", "loss_rpn_box_reg"}
ALL_LOSSES = RPN_LOSSES | {"loss_classifier", "loss_box_reg"}

CONFIGS = {
    "mobilenet_v2": ModelConfig(pretrained=False, backbone="mobilenet_v2", anchor_sizes=[16, 32, 64], freeze_at=1),
    "resnet50": ModelConfig(pretrained=False,
        backbone="resnet50", anchor_sizes=[16, 32], deformable=True, freeze_at=2, fc_dim=64, rpn_channels=64
    ),
    "resnet50_fpn": ModelConfig(pretrained=False, backbone="resnet50_fpn", norm="frozen_bn", freeze_at=2, fc_dim=64),
}
SIZES = {"mobilenet_v2": 128, "resnet50": 64, "resnet50_fpn": 64}


@pytest.fixture(scope="module")
def models() -> dict[str, SniperFasterRCNN]:
    torch.manual_seed(0)
    return {name: build_model(cfg, NUM_CLASSES) for name, cfg in CONFIGS.items()}


def target(boxes=(), labels=(), ignore=(), valid_range=(0.0, math.inf)) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
        "valid_range": torch.tensor(valid_range, dtype=torch.float32),
    }


def chips(k: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """A positive chip (2 GT + 1 ignore box) and a negative chip (only an ignore box)."""
    s = k / 128
    pos = target(
        [[10 * s, 10 * s, 60 * s, 70 * s], [70 * s, 20 * s, 120 * s, 50 * s]],
        [1, 3],
        [[0, 90 * s, 30 * s, 127 * s]],
    )
    neg = target(ignore=[[40 * s, 40 * s, 80 * s, 80 * s]])
    return torch.rand(2, 3, k, k), [pos, neg]


def grads_of(module: nn.Module) -> list[torch.Tensor | None]:
    """The grads of ``module``'s trainable parameters; there must be some (else ``all(...)`` over
    them would hold for a module that was frozen by mistake)."""
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads, f"{type(module).__name__} has no trainable parameters"
    return grads


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_step_then_eval(models, name):
    model = models[name]
    model.train()
    model.zero_grad(set_to_none=True)
    images, targets = chips(SIZES[name])
    losses = model(images, targets)
    assert set(losses) == ALL_LOSSES
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.rpn, model.roi_heads):  # every parameter of both heads trains
        assert all(p.requires_grad for p in part.parameters())
        assert all(g is not None for g in grads_of(part))

    model.eval()
    k = SIZES[name]
    sizes = [(k, k - 20), (k - 30, k)]
    with torch.no_grad():
        out = model(images, image_sizes=sizes)
    assert isinstance(out, list) and len(out) == 2
    for det, (h, w) in zip(out, sizes):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and n > 0
        assert det["labels"].min() >= 1 and det["labels"].max() <= NUM_CLASSES
        b = det["boxes"]
        assert (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
        assert (det["scores"] > 0).all() and (det["scores"] <= 1).all()


def test_rpn_only_trains_only_the_rpn(models):
    for name in ("mobilenet_v2", "resnet50"):
        model = models[name]
        model.train()
        model.zero_grad(set_to_none=True)
        model.rpn_only = True
        try:
            images, targets = chips(SIZES[name])
            losses = model(images, targets)
        finally:
            model.rpn_only = False
        assert set(losses) == RPN_LOSSES
        sum(losses.values()).backward()
        # the head is left out of the graph, not frozen (grads_of: it still has trainable parameters)
        assert all(g is None for g in grads_of(model.roi_heads))
        assert all(g is not None for g in grads_of(model.rpn))
        if name == "resnet50":  # conv5 and the head projection are the head's only
            assert all(g is None for g in grads_of(model.backbone.layer4) + grads_of(model.backbone.proj))
            assert all(g is not None for g in grads_of(model.backbone.layer3))


def test_negative_chips_train_with_zero_box_losses(models):
    model = models["mobilenet_v2"]
    model.train()
    targets = [target(), target(ignore=[[0, 0, 64, 64]])]
    losses = model(torch.rand(2, 3, 128, 128), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0 and losses["loss_rpn_box_reg"].item() == 0
    assert losses["loss_objectness"].item() > 0 and losses["loss_classifier"].item() > 0
    sum(losses.values()).backward()


def test_no_cap_on_gt_per_chip(models):
    model = models["mobilenet_v2"]
    model.train()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 100
    wh = 4 + torch.rand(500, 2, generator=g) * 24
    boxes = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(1, NUM_CLASSES + 1, (500,), generator=g)
    t = {
        "boxes": boxes,
        "labels": labels,
        "ignore_boxes": boxes[:300] + 1,
        "valid_range": torch.tensor([0, 1e9]),
    }
    losses = model(torch.rand(1, 3, 128, 128), [t])
    assert all(torch.isfinite(v) for v in losses.values())
    heads = model.roi_heads  # every one of the 500 GT takes part as an appended RoI
    props, _, lab, _ = heads.select_training_samples(
        [torch.zeros(0, 4)], model.prepare_targets([t], 1, "cpu")
    )
    assert props[0].shape[0] == 500 and torch.equal(lab[0], labels)


def test_eval_clips_to_image_sizes_and_proposals_are_probabilities(models):
    model = models["mobilenet_v2"]
    model.eval()
    images = torch.rand(2, 3, 100, 120)  # not a multiple of the stride: padded inside
    sizes = [(100, 60), (50, 120)]
    with torch.no_grad():
        out = model(images, image_sizes=sizes)
    props = model.proposals(images, sizes)
    assert len(props) == 2
    for det, (boxes, scores), (h, w) in zip(out, props, sizes):
        for b in (det["boxes"], boxes):
            assert (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all() and (b >= 0).all()
        assert boxes.shape == (scores.shape[0], 4) and 0 < boxes.shape[0] <= 300
        assert (scores >= 0).all() and (scores <= 1).all()
        assert torch.all(scores[:-1] >= scores[1:])  # best first
        assert boxes.dtype == torch.float32 and not boxes.requires_grad


def test_frozen_stages_get_no_grads_and_keep_bn_in_eval(models):
    mob = models["mobilenet_v2"]
    mob.train()
    frozen = mob.backbone.body[:2]  # a view: its blocks are the model's
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in mob.backbone.body[2:].parameters())
    assert not any(m.training for block in frozen for m in block.modules()) and mob.backbone.body[2].training
    res = models["resnet50"]
    res.train()
    for part in (res.backbone.stem, res.backbone.layer1):
        assert all(not p.requires_grad for p in part.parameters())
        bns = [m for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in res.backbone.layer2.parameters())
    stats = frozen[0][1].running_mean.clone()
    mob(torch.rand(2, 3, 64, 64), [target(), target()])
    assert torch.equal(frozen[0][1].running_mean, stats)


def test_norm_choices(models):
    fpn = models["resnet50_fpn"]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in fpn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fpn.modules())
    mob = models["mobilenet_v2"]
    assert any(type(m) is nn.BatchNorm2d for m in mob.modules())
    cfg = ModelConfig(pretrained=False, norm="sync_bn", anchor_sizes=[32], freeze_at=1)
    model = convert_sync_batchnorm(build_model(cfg, 1)).train()
    assert model.norm == "sync_bn" and any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    stem_bn = model.backbone.body[0][1]  # frozen stage: still eval after conversion
    assert isinstance(stem_bn, nn.SyncBatchNorm) and not stem_bn.training and not stem_bn.weight.requires_grad
    assert model.backbone.body[2].conv[0][1].training
    with pytest.raises(SniperError, match="model.norm"):
        build_model(ModelConfig(pretrained=False, norm="group"), 1)


def test_deformable_conv5_forward(models):
    res = models["resnet50"]
    deform = [m for m in res.backbone.layer4.modules() if isinstance(m, DeformableConv3x3)]
    assert len(deform) == 3 and res.backbone.layer4[1].conv2.conv.dilation == (2, 2)
    res.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = res.backbone(torch.rand(1, 3, 64, 64))
    assert feats["conv4"].shape[-2:] == (4, 4) and feats["head"].shape == (1, 256, 4, 4)


def test_bf16_autocast_keeps_losses_and_boxes_fp32():
    """Under bf16 autocast the heads see bf16 features; anchors, decoding and losses stay fp32.

    The backbone runs in fp32 here and hands over bf16 maps: real bf16 convolutions are
    emulated (minutes) on CPUs without AVX512-BF16, and add nothing to what is checked.
    """
    torch.manual_seed(0)  # a narrow head: bf16 matmuls are emulated too
    model = build_model(ModelConfig(pretrained=False, anchor_sizes=[16, 32], head_channels=16, rpn_channels=16, fc_dim=16), 3)
    backbone_forward = model.backbone.forward

    def bf16_features(x, with_head=True):
        with torch.autocast("cpu", enabled=False):
            return {k: v.to(torch.bfloat16) for k, v in backbone_forward(x.float(), with_head).items()}

    model.backbone.forward = bf16_features
    try:
        model.train()
        images, targets = chips(128)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(images, targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images)
            props = model.proposals(images)
    finally:
        del model.backbone.forward
    assert out[0]["boxes"].shape[0] > 0
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["scores"].dtype == torch.float32
    assert props[0][0].dtype == torch.float32 and props[0][1].dtype == torch.float32


def test_bad_inputs_raise_clear_errors(models):
    model = models["mobilenet_v2"]
    model.train()
    with pytest.raises(SniperError, match=r"target 1: box 0"):
        model(torch.rand(2, 3, 64, 64), [target(), target([[10, 10, 5, 20]], [1])])
    with pytest.raises(SniperError, match="labels must be in 1..3"):
        model(torch.rand(1, 3, 64, 64), [target([[10, 10, 20, 20]], [4])])
    with pytest.raises(SniperError, match="image_sizes"):
        model.eval()
        model(torch.rand(1, 3, 64, 64), image_sizes=[(65, 64)])
    with pytest.raises(SniperError, match="anchor_sizes"):
        build_model(ModelConfig(pretrained=False, backbone="resnet50_fpn", anchor_sizes=[32, 64]), 1)


def test_pretrained_weights_missing_gives_sniper_error(monkeypatch, tmp_path):
    import torchvision.models._api as api

    tried: list[str] = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(SniperError, match=r"mobilenet_v2-b0353104\.pth") as e:
        build_model(ModelConfig(pretrained=True), 1)
    msg = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints") in msg  # where torchvision looks
    assert "make weights" in msg and "model.pretrained=false" in msg  # how to install it, how to do without
    assert tried == []  # no network at run time: a missing file is never downloaded


def test_channels_last_is_only_a_memory_layout():
    outs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(pretrained=False, anchor_sizes=[16, 32], channels_last=channels_last), NUM_CLASSES
        ).eval()
        with torch.no_grad():
            outs.append(model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))[0])
    assert torch.allclose(outs[0]["scores"], outs[1]["scores"], atol=1e-4)
    assert torch.allclose(outs[0]["boxes"], outs[1]["boxes"], atol=1e-2)


def test_roi_match_option_and_ignore_labels_reach_the_head():
    small = dict(pretrained=False, anchor_sizes=[16, 32, 64], fc_dim=16, head_channels=16, rpn_channels=16)
    assert build_model(ModelConfig(**small), 2).roi_heads.roi_match == "all_gt"  # the paper's rule
    model = build_model(ModelConfig(roi_match="valid_gt", **small), 2)
    assert model.roi_heads.roi_match == "valid_gt"
    with pytest.raises(SniperError, match="roi_match"):
        build_model(ModelConfig(roi_match="any", **small), 2)
    # targets: ignore_labels (class of an invalid non-crowd GT, 0 = crowd) default to 0, are checked
    t = target([[0, 0, 10, 10]], [1], [[20, 20, 30, 30], [40, 40, 50, 50]])
    assert model.prepare_targets([t], 1, "cpu")[0]["ignore_labels"].tolist() == [0, 0]
    t["ignore_labels"] = torch.tensor([2, 0])
    assert model.prepare_targets([t], 1, "cpu")[0]["ignore_labels"].tolist() == [2, 0]
    t["ignore_labels"] = torch.tensor([3, 0])
    with pytest.raises(SniperError, match="ignore_labels must be in 0..2"):
        model.prepare_targets([t], 1, "cpu")
    t["ignore_labels"] = torch.tensor([1])
    with pytest.raises(SniperError, match="2 ignore boxes but 1 ignore_labels"):
        model.prepare_targets([t], 1, "cpu")
