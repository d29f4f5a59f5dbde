"""Data: sample types, adapters for BCSS / LGG / vesicle layouts, synthetic writers, sampling, prompts.

``build_dataset(cfg.data, split)`` and ``class_spec(cfg.data)`` are the entry points; see dataset.py.
"""
from sam_histo.data.dataset import build_dataset, class_spec
from sam_histo.data.types import ClassSpec, DataError, Prompts, Sample

__all__ = ["ClassSpec", "DataError", "Prompts", "Sample", "build_dataset", "class_spec"]
