"""SNIPER Faster R-CNN built from torchvision detection components."""

from sniper.model.backbones import convert_sync_batchnorm
from sniper.model.build import INFERENCE_MODEL_KEYS, build_model, set_inference_settings
from sniper.model.detector import SniperFasterRCNN

__all__ = ["INFERENCE_MODEL_KEYS", "SniperFasterRCNN", "build_model", "convert_sync_batchnorm", "set_inference_settings"]
