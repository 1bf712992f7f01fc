"""SNIPER Faster R-CNN built from torchvision detection components."""
