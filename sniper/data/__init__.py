"""Datasets: COCO reading, image decoding, the synthetic dataset, chip datasets and export."""
