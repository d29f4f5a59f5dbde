"""COCO-style run-length encoding of label maps with pycocotools, and back.

One record per class present (semantic) or per instance (when an instance map is given), shaped like a COCO
result entry so COCO tools read it::

    {"image_id": ..., "file_name": ..., "category_id": 3, "category_name": "necrosis",
     "segmentation": {"size": [H, W], "counts": "<RLE string>"}, "area": 1234, "bbox": [x, y, w, h],
     "score": 0.91,          # only when scores are given
     "instance_id": 7}       # only for instance records

``category_id`` is the class id of the label map (ids start at 0 as in every classes list of the project);
``bbox`` is COCO's [x, y, width, height] in pixels; ``counts`` is pycocotools' compressed RLE, decoded from
bytes to an ASCII string so the record is JSON (DESIGN.md section 5: pycocotools needs Fortran-ordered uint8
masks and returns bytes). Pixels with ``ignore_index`` get no record; :func:`decode` paints them ``fill``.
Instance records take the class that most of their non-ignore pixels have; an instance lying wholly on
ignore pixels gets no record.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from sam_histo.files import write_json

CHUNK = 32  # masks encoded per pycocotools call: bounds the (H, W, CHUNK) uint8 buffer


def encode_masks(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> N RLEs {"size": [H, W], "counts": str}."""
    masks = np.asarray(masks, bool)
    out = []
    for i in range(0, masks.shape[0], CHUNK):
        # bool and uint8 share one byte: one Fortran-order copy, then a view (no second full-size array)
        block = np.asfortranarray(np.moveaxis(masks[i:i + CHUNK], 0, -1)).view(np.uint8)
        out += [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
                for r in mask_utils.encode(block)]
    return out


def _score_of(scores, key: int, what: str) -> float:
    try:
        return float(scores[key])
    except (KeyError, IndexError):
        raise ValueError(f"scores has no entry for {what} {key}; give one score per {what}") from None


def _records(rles: list[dict], category_ids, class_names, extra: dict) -> list[dict]:
    raw = [_as_bytes(r) for r in rles]
    # pycocotools 2.0.11 under numpy 2: area() of more than 255 RLEs in one call raises OverflowError
    # ("out of bounds for uint8"), so it gets chunks.
    areas = [a for i in range(0, len(raw), CHUNK) for a in mask_utils.area(raw[i:i + CHUNK])]
    boxes = [b for i in range(0, len(raw), CHUNK) for b in mask_utils.toBbox(raw[i:i + CHUNK])]
    return [
        {**extra, "category_id": int(c), "category_name": class_names[c], "segmentation": r, "area": int(a),
         "bbox": [float(v) for v in b]}
        for r, c, a, b in zip(rles, category_ids, areas, boxes)
    ]


def _as_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _check_labels(label_map: np.ndarray, class_names: Sequence[str]) -> None:
    if label_map.ndim != 2:
        raise ValueError(f"label map has shape {label_map.shape}; expected (H, W) class ids")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= len(class_names)):
        bad = np.unique(label_map[(label_map < 0) | (label_map >= len(class_names))])
        raise ValueError(f"label map has ids {bad[:10].tolist()} outside 0..{len(class_names) - 1} "
                         f"(classes {list(class_names)})")


def _instance_records(label_map, instances, ignore_index, n_classes):
    """Instance ids, their majority class, and their masks (built inside each instance's bounding box)."""
    ids = np.unique(instances)
    ids = ids[ids > 0]
    slices = ndimage.find_objects(instances.astype(np.int64))
    keep, classes = [], []
    for i in ids:
        sl = slices[i - 1]
        inside = instances[sl] == i
        votes = np.bincount(label_map[sl][inside], minlength=n_classes)
        if ignore_index is not None:
            votes[ignore_index] = 0
        if votes.sum():
            keep.append(int(i))
            classes.append(int(np.argmax(votes)))
    return keep, classes, slices


def _instance_masks(instances, ids, slices):
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        block = np.zeros((len(chunk), *instances.shape), bool)
        for j, i in enumerate(chunk):
            sl = slices[i - 1]
            block[(j, *sl)] = instances[sl] == i
        yield block


def encode_label_map(
    label_map: np.ndarray,
    class_names: Sequence[str],
    ignore_index: Optional[int] = None,
    instances: Optional[np.ndarray] = None,
    scores: Optional[Mapping[int, float] | Sequence[float]] = None,
    *,
    image_id: Optional[int | str] = None,
    file_name: Optional[str] = None,
) -> list[dict]:
    """Records for one (H, W) label map of class ids in 0..len(class_names)-1.

    Without ``instances``: one record per class present (except ``ignore_index``), ``scores`` indexed by
    class id. With ``instances`` (H, W) int, 0 = none: one record per instance id, ``scores`` indexed by
    instance id. ``image_id`` / ``file_name`` are copied into every record when given.
    """
    label_map = np.asarray(label_map)
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label map has dtype {label_map.dtype}; expected integer class ids")
    _check_labels(label_map, class_names)
    extra = {k: v for k, v in (("image_id", image_id), ("file_name", file_name)) if v is not None}
    if instances is None:
        # one class mask at a time (a few bytes a pixel, not one per class): large label maps stay cheap
        ids = [int(c) for c in np.unique(label_map) if c != ignore_index]
        rles = [encode_masks((label_map == c)[None])[0] for c in ids]
        records = _records(rles, ids, class_names, extra)
        keys, what = ids, "class id"
    else:
        instances = np.asarray(instances)
        if instances.shape != label_map.shape or not np.issubdtype(instances.dtype, np.integer):
            raise ValueError(f"instance map {instances.shape} {instances.dtype} must be an integer map of the "
                             f"label map's shape {label_map.shape}")
        if instances.size and instances.min() < 0:
            raise ValueError("instance map has negative ids; 0 means no instance, objects are 1, 2, ...")
        keys, cats, slices = _instance_records(label_map, instances, ignore_index, len(class_names))
        rles = [r for block in _instance_masks(instances, keys, slices) for r in encode_masks(block)]
        records = _records(rles, cats, class_names, extra)
        for rec, i in zip(records, keys):
            rec["instance_id"] = i
        what = "instance id"
    if scores is not None:
        for rec, k in zip(records, keys):
            rec["score"] = _score_of(scores, k, what)
    return records


def _rle_masks(records: Sequence[dict], shape: tuple[int, int]):
    """Yield (record, (H, W) bool mask), decoding CHUNK records per pycocotools call."""
    for n, rec in enumerate(records):
        size = rec["segmentation"]["size"]
        if tuple(size) != tuple(shape):
            raise ValueError(f"record {n} has size {list(size)}; expected {list(shape)}")
    for start in range(0, len(records), CHUNK):
        chunk = records[start:start + CHUNK]
        with warnings.catch_warnings():
            # pycocotools' Cython decode trips numpy 2's __array__(copy=...) deprecation; the result is right.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            block = mask_utils.decode([_as_bytes(r["segmentation"]) for r in chunk])
        for j, rec in enumerate(chunk):
            yield rec, block[:, :, j].astype(bool)


def decode(records: Sequence[dict], shape: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Records -> (H, W) int64 label map of ``category_id``; uncovered pixels get ``fill`` (pass the ignore
    id to restore ignore pixels). Where records overlap, the later one wins."""
    out = np.full(shape, fill, np.int64)
    for rec, m in _rle_masks(records, shape):
        out[m] = int(rec["category_id"])
    return out


def decode_instances(records: Sequence[dict], shape: tuple[int, int]) -> np.ndarray:
    """Instance records -> (H, W) int64 instance map of ``instance_id`` (0 where none)."""
    out = np.zeros(shape, np.int64)
    for n, (rec, m) in enumerate(_rle_masks(records, shape)):
        if "instance_id" not in rec:
            raise ValueError(f"record {n} has no instance_id: it was encoded without an instance map")
        out[m] = int(rec["instance_id"])
    return out


def write_records(path: str | Path, records: Sequence[dict]) -> Path:
    """Write records as one JSON list, atomically (a resumed run never finds half a file)."""
    return write_json(path, list(records))
