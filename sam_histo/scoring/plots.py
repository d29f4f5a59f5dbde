"""Figures of a report: row-normalised confusion matrix, per-class bars, best/worst overlays (matplotlib, Agg).

Colours come from ``ClassSpec.colors()`` so a class looks the same in every figure and overlay.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sam_histo.data.types import ClassSpec


def _savefig(fig, path: Path, dpi: int) -> None:
    """Write a figure as PNG atomically (as sam_histo.files.save_png does for arrays)."""
    from sam_histo.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are written on cluster nodes without a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: dict, path: Path) -> Path:
    """Row-normalised confusion matrix (share of each ground-truth class's pixels) with pixel counts.

    Rows are the non-ignore classes; columns every id, the ignore id included when anything was predicted as
    it (a miss of the true class).
    """
    plt = _plt()
    names = metrics["class_names"]
    ignore = metrics["ignore_index"]
    counts = np.asarray(metrics["confusion_matrix"], np.int64)
    rows = [i for i in range(len(names)) if i != ignore]
    cols = [i for i in range(len(names)) if i != ignore or counts[:, i].sum() > 0]
    sub = counts[np.ix_(rows, cols)]
    share = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    size = 1.0 + 0.9 * max(len(rows), len(cols))
    fig, ax = plt.subplots(figsize=(size + 2, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for r in range(len(rows)):
        for c in range(len(cols)):
            colour = "white" if share[r, c] > 0.6 else "black"
            ax.text(c, r, f"{100 * share[r, c]:.1f}%\n{sub[r, c]:,}", ha="center", va="center", fontsize=7,
                    color=colour)
    ax.set_xticks(range(len(cols)), [names[i] + (" (ignore)" if i == ignore else "") for i in cols],
                  rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [names[i] for i in rows])
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Confusion, row-normalised (split {metrics.get('split') or 'unnamed'})")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the class's pixels")
    fig.tight_layout()
    _savefig(fig, path, 120)
    plt.close(fig)
    return path


def plot_per_class(metrics: dict, classes: ClassSpec, path: Path) -> Path:
    """Grouped bars per class: Dice, IoU, precision and recall (dataset level), macro Dice as a line."""
    plt = _plt()
    names = list(metrics["per_class"])
    keys = ("dice", "iou", "precision", "recall")
    colours = [np.array(classes.colors()[classes.id_of(n)]) / 255 for n in names]
    fig, ax = plt.subplots(figsize=(2 + 1.3 * len(names), 4))
    width = 0.2
    x = np.arange(len(names))
    for j, key in enumerate(keys):
        vals = [metrics["per_class"][n][key] for n in names]
        heights = [v if v is not None else 0.0 for v in vals]
        ax.bar(x + (j - 1.5) * width, heights, width, color=colours, alpha=1.0 - 0.2 * j, edgecolor="black",
               linewidth=0.5, hatch=["", "//", "..", "xx"][j], label=key)
    macro = metrics["macro"]["dice"]
    if macro is not None:
        ax.axhline(macro, color="black", linestyle="--", linewidth=1, label=f"macro Dice {macro:.3f}")
    ax.set_xticks(x, [f"{n}\n{metrics['per_class'][n]['support_pixels']:,} px" for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (dataset level)")
    ax.set_title(f"Per class, split {metrics.get('split') or 'unnamed'}")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    _savefig(fig, path, 120)
    plt.close(fig)
    return path


def colorize(labels: np.ndarray, classes: ClassSpec) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 with the class colours (ids outside the classes drawn white)."""
    lut = np.full((max(int(labels.max(initial=0)) + 1, classes.num_classes), 3), 255, np.uint8)
    lut[: classes.num_classes] = np.asarray(classes.colors(), np.uint8)
    return lut[np.asarray(labels, np.int64)]


# The error panel's colours (Okabe & Ito yellow, vermillion, blue; dimmed image; black), named in its legend.
ERROR_COLOURS = {"correct (TP)": (240, 228, 66), "missed (FN)": (213, 94, 0), "false alarm (FP)": (0, 114, 178),
                 "ignored": (0, 0, 0)}


def overlay_panel(
    image: Optional[np.ndarray], gt: np.ndarray, pred: np.ndarray, classes: ClassSpec, class_id: int
) -> list[np.ndarray]:
    """Three RGB uint8 views of one 2-D image: ground truth, prediction, and the errors of ``class_id``.

    image: (H, W, 3) uint8 or None (a grey background is used); gt, pred: (H, W) ids. The error view marks
    true positives yellow, false negatives (missed) orange and false positives blue (ERROR_COLOURS: apart for
    every kind of colour blindness), other pixels dimmed and ignored ones black.
    """
    base = np.full((*gt.shape, 3), 200, np.uint8) if image is None else np.asarray(image, np.uint8)[..., :3]
    # the class colour over the tissue's grey level, as infer.overlay does: a tint over the stain shifts its hue
    grey = (base.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    blend = lambda lab: (0.5 * grey + 0.5 * colorize(lab, classes)).astype(np.uint8)  # noqa: E731
    g, p = gt == class_id, pred == class_id
    err = (0.6 * base).astype(np.uint8)
    for where, key in ((g & p, "correct (TP)"), (g & ~p, "missed (FN)"), (~g & p, "false alarm (FP)")):
        err[where] = ERROR_COLOURS[key]
    if classes.ignore_index is not None:
        err[gt == classes.ignore_index] = ERROR_COLOURS["ignored"]
    return [blend(gt), blend(pred), err]


def write_overlays(
    out_dir: Path, items: Sequence[tuple], classes: ClassSpec, class_name: str, tag: str
) -> list[Path]:
    """One PNG per item: image | ground truth | prediction | errors of ``class_name``.

    items: (image or None, gt (H, W), pred (H, W), name, score) tuples, e.g. the best or worst images from
    ``Evaluator.best_worst`` reloaded by the caller; a 3-D item shows its middle slice. Files are named
    ``overlay_{tag}_{rank}_{name}.png``.
    """
    plt = _plt()
    from matplotlib.patches import Patch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = classes.id_of(class_name)
    paths = []
    for rank, (image, gt, pred, name, score) in enumerate(items, 1):
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.ndim == 3:  # volume: the middle slice
            z = gt.shape[0] // 2
            gt, pred, image = gt[z], pred[z], None if image is None else np.asarray(image)[z]
        if image is not None and np.asarray(image).ndim == 2:
            image = np.repeat(np.asarray(image, np.uint8)[..., None], 3, axis=2)
        views = overlay_panel(image, gt, pred, classes, c)
        if image is not None:
            views.insert(0, np.asarray(image, np.uint8)[..., :3])
        titles = (["image"] if image is not None else []) + ["ground truth", "prediction", f"errors: {class_name}"]
        fig, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 4.2))
        for ax, view, title in zip(axes, views, titles):
            ax.imshow(view)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        legend = [Patch(facecolor=np.array(col) / 255, edgecolor="0.3",
                        label=f"{n} (ignored)" if i == classes.ignore_index else n)
                  for i, (n, col) in enumerate(zip(classes.names, classes.colors()))]
        fig.legend(handles=legend, loc="lower left", bbox_to_anchor=(0.0, 0.0), ncol=min(len(legend), 4),
                   fontsize=7, title="classes (ground truth, prediction)", title_fontsize=7, frameon=False)
        errs = [Patch(facecolor=np.array(col) / 255, edgecolor="0.3", label=k) for k, col in ERROR_COLOURS.items()]
        errs.append(Patch(facecolor="0.45", edgecolor="0.3", label="other pixels (dimmed)"))
        fig.legend(handles=errs, loc="lower right", bbox_to_anchor=(1.0, 0.0), ncol=2, fontsize=7,
                   title=f"errors of {class_name}", title_fontsize=7, frameon=False)
        shown = str(name) if len(str(name)) <= 40 else f"{str(name)[:37]}..."
        fig.suptitle(f"{tag} {rank}: {shown}, {class_name} Dice {score:.3f}", fontsize=10)
        fig.tight_layout(rect=(0, 0.17, 1, 0.97))
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
        path = out_dir / f"overlay_{tag}_{rank}_{safe}.png"
        _savefig(fig, path, 100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_heatmap(path: Path, image: np.ndarray, score: np.ndarray, mask: np.ndarray, tissue: np.ndarray,
                 class_name: str, units: str, threshold: float, max_side: int = 1200) -> Path:
    """The heatmap drawn over its tile: ``score`` (float (H, W), z-scores or probabilities) in a colour map
    over the tile on tissue (glass left bare), the thresholded ``mask`` outlined, and a colour bar in
    ``units``. Images larger than ``max_side`` are shown at a stride (the saved maps keep full size)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    step = max(1, int(np.ceil(max(score.shape) / max_side)))
    image, score = np.asarray(image)[::step, ::step, :3], np.asarray(score, np.float32)[::step, ::step]
    mask, tissue = np.asarray(mask, bool)[::step, ::step], np.asarray(tissue, bool)[::step, ::step]
    h, w = score.shape
    fig, ax = plt.subplots(figsize=(min(10.0, 2.0 + 6.0 * w / max(h, w)) + 1.5, 1.2 + 6.0 * h / max(h, w)))
    ax.imshow(image)
    shown = np.ma.masked_where(~tissue, score)
    im = ax.imshow(shown, cmap="cividis", alpha=0.55)  # cividis: readable with any colour vision
    if mask.any():
        ax.contour(mask.astype(np.uint8), levels=[0.5], colors=["#E69F00"], linewidths=1.5)
    ax.axis("off")
    ax.set_title(f"{class_name}: {units}, threshold {threshold:.3g}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=units)
    ax.legend(handles=[Line2D([], [], color="#E69F00", lw=2, label=f"{class_name} heatmap (>= threshold, cleaned)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=8, frameon=False)
    fig.tight_layout()
    _savefig(fig, path, 100)
    plt.close(fig)
    return Path(path)
