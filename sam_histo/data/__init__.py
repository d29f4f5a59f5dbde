"""Data: sample types, adapters for BCSS / LGG / vesicle layouts, synthetic writers, sampling, prompts."""
from sam_histo.data.types import ClassSpec, DataError, Prompts, Sample

__all__ = ["ClassSpec", "DataError", "Prompts", "Sample"]
