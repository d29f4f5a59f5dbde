"""Inference: one image's probabilities or prompted masks, sliding windows, post-processing, heatmaps, RLE, overlays, `sam-histo predict`."""
