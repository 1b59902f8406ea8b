"""Data: readers for the official layouts, taxonomies, images, splits, the synthetic default."""
