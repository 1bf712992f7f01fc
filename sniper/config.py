"""Typed configuration: one dataclass tree, YAML in and out, ``key=value`` overrides.

Defaults are the paper's COCO settings (see ``docs/architecture.md``). A YAML file
only lists what differs; unknown keys are errors, never silently ignored. A few configs ship
inside the package (``sniper/configs/``); ``load_config`` takes their name or any YAML path.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sniper.errors import ConfigError, SniperError
from sniper.scales import Scale, parse_scale

__all__ = [
    "ChipConfig",
    "Config",
    "DataConfig",
    "InferConfig",
    "ModelConfig",
    "ProposalConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "merge_config_file",
    "resolve_config_path",
    "save_config",
    "shipped_configs",
    "to_dict",
]


def paper_train_scales() -> list[Scale]:
    """Training scales of the paper for COCO: x3, x1.667, longest side 512."""
    return [
        Scale(factor=3.0, valid_range=(None, 80.0)),
        Scale(factor=1.667, valid_range=(32.0, 150.0)),
        Scale(longest=512, valid_range=(120.0, None)),
    ]


def paper_test_scales() -> list[Scale]:
    """Inference scales of the paper: (1400, 2000), (800, 1280), (480, 512)."""
    return [
        Scale(short=1400, max_size=2000, valid_range=(None, 90.0)),
        Scale(short=800, max_size=1280, valid_range=(32.0, 180.0)),
        Scale(short=480, max_size=512, valid_range=(75.0, None)),
    ]


@dataclass
class ChipConfig:
    """Chip generation (paper §3.1-3.3)."""

    chip_size: int = 512
    stride: int = 32
    # Draw a stride uniformly from [lo, hi] anew each epoch (the released code uses [56, 59]).
    random_stride: list[int] | None = None
    # Mine the chips anew every epoch (stride, tie-break order and negative pools of
    # (seed, epoch)), as the released code does; false: epoch 0's chips every epoch.
    regenerate: bool = True
    scales: list[Scale] = field(default_factory=paper_train_scales)
    # Negative chips keep a window only if it holds MORE than this many proposals; one value per scale.
    neg_min_proposals: list[int] = field(default_factory=lambda: [25, 10, 10])
    neg_per_image: int = 2
    # Labels inside a chip: a GT box clipped to the chip is an ignore region rather than a
    # valid object when its clipped side is below min_box_size chip px.
    min_box_size: float = 2.0


@dataclass
class DataConfig:
    on_bad_image: str = "error"  # "error" | "skip"
    max_image_pixels: int = 200_000_000
    flip: bool = True
    num_workers: int = 2
    # Decoded images kept per DataLoader worker, bounded by count and by pixels (3 bytes each).
    image_cache_size: int = 4
    # Chips of this many consecutive images (in the shuffled order) are shuffled together, so a
    # batch mixes images (demo: AP 0.280 -> 0.388 from 1 to 8, docs/results.md); 1 keeps each
    # image's chips together. Each worker's decode cache then holds W of the largest images
    # (up to 200 M pixels), so one decode per image still serves its chips.
    mix_images: int = 8
    image_cache_pixels: int = 50_000_000


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v2"  # mobilenet_v2 | resnet50 | resnet101 | resnet50_fpn
    # ImageNet weights from torchvision's cache (`make weights`); tests and ablations set false.
    pretrained: bool = True
    norm: str = "bn"  # bn (batch statistics) | frozen_bn | sync_bn
    freeze_at: int = 0  # 0: nothing frozen; 1: stem; 2: stem + first stage
    # mobilenet_v2 only: 32 = the whole network (the paper); 16 = stop after the stride-16 blocks.
    output_stride: int = 32
    deformable: bool = False
    rpn_channels: int = 256
    head_channels: int = 256
    fc_dim: int = 512
    # RoIAlign 7x7 sampling points per bin side; 0 = adaptive ceil(bin size in feature cells),
    # Detectron's default: 1 for RoIs under 7 cells, and ~3x cheaper than 2 on CPU (backward).
    roi_sampling_ratio: int = 0
    # channels_last backbone and input (measured ~15-25% faster fp32 training on CPU).
    channels_last: bool = True
    anchor_sizes: list[float] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou_thresh: float = 0.5
    rpn_bg_iou_thresh: float = 0.4
    rpn_ignore_iou_thresh: float = 0.3
    box_fg_iou_thresh: float = 0.5
    box_ignore_iou_thresh: float = 0.5
    # RoI foreground against: all_gt = any non-crowd GT in the chip, valid or not (paper §3.4:
    # a cropped large GT can give a valid proposal) | valid_gt = only the chip's valid GT.
    roi_match: str = "all_gt"
    # None: use every proposal, no foreground fraction (the paper); an int samples that many.
    box_batch_size_per_image: int | None = None
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.001
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 300
    class_agnostic_bbox_reg: bool = True
    bbox_reg_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    # Instance masks (paper Table 3): a Mask R-CNN branch on the head's foreground RoIs; chips
    # then carry box-local masks (targets["masks"], docs/model.md "Instance masks").
    masks: bool = False
    # sigmoid = per-class binary cross entropy (the paper's better one) | softmax = (C+1)-way per pixel.
    mask_loss: str = "sigmoid"
    mask_pool_size: int = 14  # RoIAlign side of the mask branch; predicted masks are twice that
    # 3x3 conv widths of torchvision's MaskRCNNHeads (Mask R-CNN: four of 256).
    mask_head_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    mask_target_size: int = 56  # side S of each GT box's box-local mask in targets["masks"]
    mask_loss_weight: float = 1.0
    # A mask model's detections per image pass at inference (the best by score), in place of
    # box_detections_per_img: every one runs the mask head (demo, CPU: 3.6x box-only inference
    # time at 300, 2.6x at 100, the same AP).
    mask_detections_per_img: int = 100


@dataclass
class TrainConfig:
    batch_size: int = 16
    lr: float = 0.015
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    epochs: int = 7
    lr_steps: list[float] = field(default_factory=lambda: [5.33])  # in epochs
    lr_gamma: float = 0.1
    rpn_epochs: int = 2
    # Stage lengths in iterations instead of epochs (what `sniper plan` writes: an epoch over two
    # images and one over COCO are not the same amount of learning). When set they replace
    # epochs / rpn_epochs, and lr_steps_iters (if set) replaces lr_steps.
    iterations: int | None = None
    rpn_iterations: int | None = None
    lr_steps_iters: list[int] | None = None
    rpn_lr: float | None = None  # None: same as lr
    negatives: bool = True
    # Start the detector stage from the stage-1 RPN weights instead of the backbone init.
    # The paper trains the detector from ImageNet weights (False); True saves time on tiny budgets.
    init_from_rpn: bool = False
    amp: bool = False
    checkpoint_every: int = 0  # iterations; 0: only at the end of each epoch
    keep_checkpoints: int = 3
    log_every: int = 10
    tensorboard: bool = False
    deterministic: bool = False
    max_iters: int | None = None  # stop a stage early (tests, time budgets)
    time_budget_s: float | None = None
    # DDP: how long a collective may wait for the other ranks before the job fails (instead of
    # NCCL's 10-minute default killing a long rank-0-only stage, or a hang lasting forever)
    dist_timeout_s: float = 7200.0


@dataclass
class ProposalConfig:
    """Stage 2: RPN proposals over whole training images for negative mining."""

    scales: list[Scale] = field(default_factory=paper_test_scales)
    top_per_scale: int = 300
    nms_thresh: float = 0.7


@dataclass
class InferConfig:
    scales: list[Scale] = field(default_factory=paper_test_scales)
    merge: str = "softnms"  # softnms | nms
    softnms_method: str = "gaussian"  # gaussian | linear
    softnms_sigma: float = 0.55
    iou_thresh: float = 0.5  # for nms, and linear soft-nms
    score_thresh: float = 0.001
    max_detections: int = 200
    # Per scale and image, the best this many detections in the scale's valid range go to the
    # merge (bounds memory; the head's NMS and top-k are skipped for the pyramid). None: all.
    pre_merge_top_k: int | None = 3000
    batch_size: int = 2
    # Images larger than this many pixels at a scale are run in overlapping tiles.
    max_pixels_per_pass: int = 2000 * 2000
    tile_overlap: int = 128


@dataclass
class Config:
    seed: int = 0
    chips: ChipConfig = field(default_factory=ChipConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    infer: InferConfig = field(default_factory=InferConfig)


# ---------------------------------------------------------------- conversion


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; raise naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: null is not allowed")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}: cannot read {value!r} as {tp}: {'; '.join(errors)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Scale:
        try:
            return parse_scale(value)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp}")


def _from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(
            f"unknown config key(s) {sorted(unknown)} in '{where or 'root'}'; valid: {sorted(names)}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready form of a config (scales as mappings)."""
    if isinstance(obj, Scale):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML) and revalidate."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})"
            ) from None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"override {item!r}: '{p}' is not a config section")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key '{key}'")
        node[parts[-1]] = value
    return _from_dict(Config, data)


# ---------------------------------------------------------------- shipped configs


def shipped_configs() -> dict[str, Path]:
    """The configs shipped in the package, ``{name: path}`` (``cpu_small``, ``paper_resnet101``, ...)."""
    root = resources.files("sniper") / "configs"
    if not root.is_dir():
        return {}
    # Wheels install unzipped, so each entry is a real file on disk.
    files = [e for e in root.iterdir() if e.is_file() and e.name.endswith(".yaml")]
    return {e.name.removesuffix(".yaml"): Path(str(e)) for e in sorted(files, key=lambda e: e.name)}


def resolve_config_path(name_or_path: str | Path) -> Path:
    """An existing file path as given; else the shipped config of that name (``.yaml`` optional).

    Raises ``SniperError`` naming the shipped configs when it is neither.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    shipped = shipped_configs()
    is_bare_name = not any(sep in text for sep in {"/", os.sep, os.altsep} - {None})
    if is_bare_name and text.removesuffix(".yaml") in shipped:
        return shipped[text.removesuffix(".yaml")]
    names = ", ".join(shipped) or "none"
    raise SniperError(f"config {text!r}: no such file, and not a shipped config (shipped: {names})")


def merge_config_file(cfg: Config, path: str | Path) -> Config:
    """``cfg`` updated by the YAML file (or shipped config name) ``path``; keys it lacks keep their values."""
    path = resolve_config_path(path)
    try:
        # utf-8-sig: files saved by Windows editors often start with a byte-order mark.
        with open(path, encoding="utf-8-sig") as f:
            loaded = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (config files are UTF-8 YAML)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: a config file must hold a mapping at the top level")
    try:
        return _from_dict(Config, _merge(to_dict(cfg), loaded))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what is wrong and where (1-based line and column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, updated by the YAML file at ``path`` (if any), then by ``overrides``.

    ``path`` is a YAML file or the name of a shipped config (see ``shipped_configs``); an
    existing file wins over a shipped config of the same name.
    """
    cfg = Config() if path is None else merge_config_file(Config(), path)
    return apply_overrides(cfg, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from sniper.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
