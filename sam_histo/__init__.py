"""sam_histo: fine-tune SAM2 on microscopy and report true per-class numbers."""
__version__ = "0.1.0"


def load_release(path):
    """Load a released bundle (verifies every hash); see :mod:`sam_histo.release`."""
    from sam_histo.release import load_release as _load

    return _load(path)
