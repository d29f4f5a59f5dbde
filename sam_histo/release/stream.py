"""`sam-histo predict` of a semantic release without stain normalisation, streamed: memory bounded by the
window batch, not by the image.

The image is read a window-high strip at a time (TIFFs by region, :class:`~sam_histo.infer.predict_io.ImageRows`),
``sliding_window_rows`` yields finished row bands of probabilities, and each band goes straight into the
outputs: the label map (1 byte a pixel, the one full-size array besides the overlay's 3 and ``--probs``' 1 per
class), the heatmap class's float32 ``.npy`` appended band by band to its file, the per-class probability
sums of the RLE scores. No (C, H, W) float array exists, so a 12 k tile costs what its outputs cost.
The tissue mask (H&E's default) is made first, band by band with enough context to equal the whole-image
mask (``stain.tissue.tissue_mask_rows``; 1 byte a pixel). The numbers and files equal the whole-image path
(``infer.image.semantic_probs``, ``release.predict.write_outputs``) exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from sam_histo.files import save_png
from sam_histo.infer.predict_io import ImageRows, Outputs


def can_stream(release, h: int, w: int) -> bool:
    """Semantic head, no stain normalisation (it is fitted on the whole image), no multi-scale TTA or region
    clean-up (both resize or label the whole image), image at least one window."""
    size, ev = release.model.image_size, release.config.eval
    return (release.model.semantic_head is not None and release.config.stain.method == "none"
            and list(ev.tta_scales) == [1.0] and not ev.min_region_um2 and min(h, w) >= size)


class _NpyRows:
    """A float32 (h, w) .npy written band by band (atomically: a temporary file renamed at the end)."""

    def __init__(self, path: Path, h: int, w: int):
        from sam_histo.files import atomic_path

        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._f = open(tmp, "wb")
        np.lib.format.write_array_header_1_0(self._f, {"descr": "<f4", "fortran_order": False, "shape": (h, w)})

    def write(self, band: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(band, dtype="<f4").tobytes())

    def close(self, ok: bool) -> None:
        self._f.close()
        self._ctx.__exit__(None if ok else RuntimeError, None, None)


class Masking(NamedTuple):
    """The tissue mask of a streamed image: its HSV settings (TissueConfig), the id glass gets, and where
    the mask PNG goes."""

    tissue: object
    glass: int
    png: Path


def predict_streamed(release, path: Path, o: Outputs, prob_ids: list[int], overlap: float, batch_size: int,
                     max_pixels: int, masking: Optional[Masking] = None, image_id: int = 0) -> bool:
    """Predict one image into every file ``o`` asks for (see the module docstring); with ``masking``, glass
    is labelled ``masking.glass`` as the whole-image path does. Returns True for a grey image, which is not
    masked (HSV finds no stain in grey)."""
    from sam_histo.infer.rle import encode_label_map, write_records
    from sam_histo.stain.tissue import tissue_mask_rows

    classes = release.classes
    with ImageRows(path, max_pixels) as src:
        tissue, grey = (None, False) if masking is None else tissue_mask_rows(src.rows, src.h, src.w,
                                                                              masking.tissue)
        tissue = None if grey else tissue
        label, sums, counts = _predict_bands(release, src, o, prob_ids, overlap, batch_size, tissue,
                                             None if masking is None else masking.glass)
        if o.overlay:
            _overlay(release, src, label, counts, o.overlay_png)
    if tissue is not None:
        save_png(masking.png, tissue.astype(np.uint8) * 255)
    if o.rle:
        present = [int(k) for k in np.flatnonzero(counts) if k != classes.ignore_index]
        scores = {k: float(sums[k] / counts[k]) for k in present}  # mean probability of its pixels
        write_records(o.rle_json, encode_label_map(label, classes.names, classes.ignore_index, scores=scores,
                                                   image_id=image_id, file_name=path.name))
    save_png(o.label, label)
    return grey


def _predict_bands(release, src: ImageRows, o: Outputs, prob_ids: list[int], overlap: float, batch_size: int,
                   tissue: Optional[np.ndarray], glass: Optional[int]):
    """The label map, and per class the summed probability and count of its pixels, band by band; the
    probability PNGs and the heatmap class's .npy are written on the way."""
    from sam_histo.infer.image import semantic_predict_fn
    from sam_histo.infer.sliding import sliding_window_rows

    classes, model = release.classes, release.model
    c, h, w = classes.num_classes, src.h, src.w
    label = np.empty((h, w), np.uint8 if c <= 256 else np.uint16)
    probs_u8 = {k: np.empty((h, w), np.uint8) for k in prob_ids} if o.probs else {}
    sums, counts = np.zeros(c, np.float64), np.zeros(c, np.int64)
    score = _NpyRows(o.score_npy, h, w) if o.heatmap_class else None
    hid = classes.id_of(o.heatmap_class) if o.heatmap_class else None
    ok = False
    try:
        fn = semantic_predict_fn(model, classes.ignore_index, tta=release.config.eval.tta)
        for y0, y1, p, _ in sliding_window_rows(src.rows, h, w, fn, model.image_size, overlap, batch_size, c):
            lab = p.argmax(0)
            if tissue is not None:
                lab = np.where(tissue[y0:y1], lab, glass)
            label[y0:y1] = lab
            sums += np.bincount(lab.ravel(), weights=np.take_along_axis(p, lab[None], 0).ravel(), minlength=c)
            counts += np.bincount(lab.ravel(), minlength=c)
            for k, arr in probs_u8.items():
                arr[y0:y1] = np.rint(np.clip(p[k], 0, 1) * 255)
            if score is not None:
                score.write(p[hid])
        ok = True
    finally:
        if score is not None:
            score.close(ok)
    for k, arr in probs_u8.items():
        save_png(o.prob_png(k), arr)
    return label, sums, counts


def _overlay(release, src: ImageRows, label: np.ndarray, counts: np.ndarray, path: Path) -> None:
    """The overlay with its legend band below, as the whole-image path draws it, in bands with one row of
    context so outlines match."""
    from sam_histo.infer.overlay import class_legend, overlay

    classes, (h, w) = release.classes, label.shape
    legend = class_legend(w, [int(k) for k in np.flatnonzero(counts)], classes.names, classes.colors(),
                          classes.ignore_index)
    over = np.empty((h + legend.shape[0], w, 3), np.uint8)
    over[h:] = legend
    step = max(release.model.image_size, 256)
    for y0 in range(0, h, step):
        a, b = max(0, y0 - 1), min(h, y0 + step + 1)
        tinted = overlay(src.rows(a, b), label[a:b], classes.colors(), ignore_index=classes.ignore_index)
        over[y0:min(h, y0 + step)] = tinted[y0 - a:y0 - a + min(step, h - y0)]
    save_png(path, over)
