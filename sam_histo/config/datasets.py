"""The dataset kinds a config can name (``data.dataset``): one table asked everywhere instead of string tests.

Each kind says where its adapter lives, its modality (``he`` for H&E tiles, ``em`` for electron
microscopy: stain operations are H&E only), the split modes it supports, whether it is a 3-D volume of
instances, and whether its class list is fixed by its label codes. The adapter module is imported only
when a dataset is built, so the config layer stays free of data code (imports point down).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

from sam_histo.errors import ConfigError


@dataclass(frozen=True)
class DatasetKind:
    name: str
    adapter: str  # "module:Class" of the adapter (a data.base.Adapter subclass)
    modality: str  # "he" or "em"
    splits: tuple[str, ...]  # the data.split modes it supports
    fixed_classes: Optional[tuple[str, ...]] = None  # class names fixed by the label codes, id 0 first
    volume: bool = False  # a 3-D instance volume (3-D instance metrics, `sam-histo em`)
    description: str = ""

    @property
    def stain(self) -> bool:
        """Stain normalisation and augmentation apply (H&E only)."""
        return self.modality == "he"

    def adapter_class(self):
        module, _, cls = self.adapter.partition(":")
        return getattr(importlib.import_module(module), cls)


KINDS: dict[str, DatasetKind] = {k.name: k for k in (
    DatasetKind("bcss", "sam_histo.data.bcss:BCSS", "he", ("random", "institute"),
                description="BCSS ROIs: images/ + masks/ (region codes) + gtruth_codes.tsv"),
    DatasetKind("lgg", "sam_histo.data.lgg:LGG", "he", ("random",), ("background", "CT", "LE", "IT"),
                description="LGG glioma: images/ + masks/ (0-3) and unmasked crops"),
    DatasetKind("folder", "sam_histo.data.folder:Folder", "he", ("random", "files"),
                description="your own images/ + masks/ (label maps) matched by stem, any image format"),
    DatasetKind("coco", "sam_histo.data.io.coco:Coco", "he", ("random", "files"),
                description="a COCO instances JSON (polygons, RLE) + images/; categories mapped by name"),
    DatasetKind("dataset", "sam_histo.data.dataset:SampleDataset", "he", ("random",),
                description="your own torch Dataset of Sample, given to sam_histo.train / sam_histo.evaluate"),
    DatasetKind("vesicle", "sam_histo.data.vesicle:Vesicle", "em", ("z",), ("background", "vesicle"),
                volume=True, description="EM vesicle volume + instance labels (HDF5 or TIFF)"),
)}


def dataset_kind(name: str) -> DatasetKind:
    """The registered kind ``name``; an unknown name fails naming the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        from sam_histo.config.errors import nearest

        raise ConfigError(f"data.dataset={name!r} is not a known dataset kind {sorted(KINDS)}"
                          + nearest(name, KINDS)) from None


def modality(name: str) -> str:
    """``he`` or ``em`` for the dataset kind ``name`` (chooses the stain pipeline)."""
    return dataset_kind(name).modality
