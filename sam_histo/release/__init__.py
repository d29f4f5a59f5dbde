"""Release bundles: `sam-histo release` (build.py), the bundle layout and load_release (bundle.py), the model card."""
