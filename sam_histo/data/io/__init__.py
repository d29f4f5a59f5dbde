"""File-level pieces the adapters share: image and label readers, tiling with a cached index, decoded-image
cache, and the resolution (microns per pixel) of a file with resampling between resolutions."""
