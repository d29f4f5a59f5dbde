"""File-level pieces the adapters share: image and label readers, tiling with a cached index, decoded-image
cache."""
