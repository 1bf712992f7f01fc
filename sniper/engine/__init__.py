"""Training, proposals, prediction and evaluation."""
