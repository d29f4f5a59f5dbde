"""Synthetic data in the real on-disk layouts (`sam-histo synth`): layouts.py writes BCSS, LGG and vesicle
folders; render.py draws Beer-Lambert H&E tissue and EM vesicles."""
