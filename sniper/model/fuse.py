"""Fold inference-time BatchNorm into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one conv with
rescaled weights and a bias. On CPU the separate BatchNorm pass over full-resolution pyramid
feature maps costs about a third of MobileNetV2 inference; folding it removes that pass.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["fuse_conv_bn", "has_foldable_norms"]

_NORMS = (_BatchNorm, FrozenBatchNorm2d)
# torchvision's ResNet blocks call their convs and norms by name rather than in a Sequential.
_NAMED_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _fused(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    fused.weight = nn.Parameter(weight.detach(), requires_grad=False)
    fused.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return fused


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    # Exactly nn.Conv2d: subclasses (and DeformConv2d, which is not one) may not be linear in x.
    return type(conv) is nn.Conv2d and isinstance(norm, _NORMS)


def _pairs(module: nn.Module):
    """(conv name, norm name) of every foldable pair directly inside ``module``."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = module._modules[a], module._modules[b]
            if _foldable(conv, norm):
                yield a, b
    for conv_name, norm_name in _NAMED_PAIRS:
        conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
        if conv is not None and norm is not None and _foldable(conv, norm):
            yield conv_name, norm_name


def has_foldable_norms(model: nn.Module) -> bool:
    """True when ``fuse_conv_bn`` would fold at least one norm."""
    return any(next(_pairs(m), None) is not None for m in model.modules())


def _fold_in_place(module: nn.Module) -> int:
    folded = 0
    for conv_name, norm_name in list(_pairs(module)):
        conv, norm = getattr(module, conv_name), getattr(module, norm_name)
        setattr(module, conv_name, _fused(conv, norm))
        setattr(module, norm_name, nn.Identity())
        folded += 1
    for child in module.children():
        folded += _fold_in_place(child)
    return folded


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in which every BatchNorm (or FrozenBatchNorm2d) that directly
    follows an ``nn.Conv2d`` is folded into that conv. Outputs match the eval-mode original up to
    float rounding; the original is left untouched. Only for inference: the copy cannot train
    its norms."""
    fused = copy.deepcopy(model).eval()
    _fold_in_place(fused)
    return fused
