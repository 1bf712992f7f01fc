"""Detection ops that torchvision does not have (Soft-NMS)."""
