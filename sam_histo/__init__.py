"""sam_histo: fine-tune SAM2 on microscopy and report true per-class numbers."""
__version__ = "0.1.0"


def load_release(path, expected_digest=None):
    """Load a released bundle, verifying every file's sha256 (and, with ``expected_digest``, the sha256 of its
    SHA256SUMS as published); see :mod:`sam_histo.release.bundle` for what the returned Release holds."""
    from sam_histo.release.bundle import load_release as _load

    return _load(path, expected_digest)


def train(cfg=None, train=None, val=None, test=None, **kwargs):
    """Train on a config's data or on your own Datasets of Sample: see :func:`sam_histo.api.train`."""
    from sam_histo.api import train as _train

    return _train(cfg, train, val, test, **kwargs)


def evaluate(model_or_release, dataset, cfg=None, **kwargs):
    """Per-class metrics of a model, run folder or release on your Dataset: see :func:`sam_histo.api.evaluate`."""
    from sam_histo.api import evaluate as _evaluate

    return _evaluate(model_or_release, dataset, cfg, **kwargs)
