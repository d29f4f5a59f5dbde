"""H&E stain toolkit: Macenko and Reinhard normalisation with counted fallbacks (macenko.py,
reinhard.py), HED jitter and Macenko-space augmentation (hed.py), albumentations normalisation op
(normalize.py), `sam-histo stain normalize` (cli.py). Import the submodules you need: the
albumentations-based ones are not loaded by numpy-only users."""
