"""sam_histo: fine-tune SAM2 on microscopy and report true per-class numbers."""
__version__ = "0.1.0"


def load_release(path, expected_digest=None):
    """Load a released bundle, verifying every file's sha256 (and, with ``expected_digest``, the sha256 of its
    SHA256SUMS as published); see :mod:`sam_histo.release.bundle` for what the returned Release holds."""
    from sam_histo.release.bundle import load_release as _load

    return _load(path, expected_digest)
