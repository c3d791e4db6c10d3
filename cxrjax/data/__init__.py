"""Datasets: parsing of the public layouts, TFDS builders, the grain pipeline, the synthetic set."""
