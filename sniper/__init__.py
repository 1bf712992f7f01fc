"""sniper: SNIPER efficient multi-scale training for object detection, in PyTorch."""

__version__ = "0.1.0"
