"""Datasets: catalogue, file readers, formats, mixing, encoding and the on-disk cache."""
