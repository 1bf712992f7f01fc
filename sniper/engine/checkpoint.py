"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded with ``weights_only=True``.

Two kinds:

- training checkpoints (``RUN_DIR/checkpoints/<stage>_<iter>.pt``): model, optimizer, scheduler,
  scaler, progress and RNG states, so that ``--resume`` continues exactly;
- the inference model (``RUN_DIR/model_final.pt``): model weights, the resolved config and the
  dataset's categories, everything ``sniper predict`` needs.

The categories of a model file (``[{id, name}]``) are in LABEL order: model label ``l`` (1..C) is
entry ``l - 1``. Labels are the dataset's category ids in increasing order
(``CocoDataset.label_of``), whatever order the COCO file lists them in, so
``save_model_final`` stores them sorted by id and ``load_model_for_inference`` returns them
sorted by id (which also reads files written in file order by older versions correctly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sniper.config import Config, _from_dict, to_dict
from sniper.data.coco import categories_in_label_order
from sniper.errors import SniperError
from sniper.io import atomic_path

__all__ = ["load_checkpoint", "load_model_for_inference", "save_checkpoint", "save_model_final"]

MODEL_FORMAT = "sniper-model"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file, then rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SniperError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupted or foreign file: say so, don't dump a pickle traceback
        raise SniperError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from None


def save_model_final(path: str | Path, model: torch.nn.Module, cfg: Config, categories: list[dict]) -> None:
    """The inference artefact: weights + resolved config + categories (dataset ids and names),
    stored in label order (sorted by id, see the module docstring)."""
    module = getattr(model, "module", model)  # unwrap DDP
    state = {
        "format": MODEL_FORMAT,
        "version": 1,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "config": to_dict(cfg),
        "categories": categories_in_label_order(categories),
    }
    save_checkpoint(path, state)


def load_model_for_inference(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Config, list[dict]]:
    """Rebuild the model from ``model_final.pt`` (or a training checkpoint that carries config and
    categories). Returns ``(model in eval mode, config, categories in label order)``."""
    from sniper.model import build_model

    state = load_checkpoint(path, map_location)
    if "model" not in state or "config" not in state or "categories" not in state:
        raise SniperError(f"{path}: not a sniper model file (needs 'model', 'config' and 'categories')")
    cfg = _from_dict(Config, state["config"])
    categories = categories_in_label_order(state["categories"])
    cfg.model.pretrained = False  # the weights come from the file
    model = build_model(cfg.model, num_classes=len(categories))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise SniperError(f"{path}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model, cfg, categories
