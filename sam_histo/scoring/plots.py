"""Figures of a report: row-normalised confusion matrix, per-class bars, best/worst overlays (matplotlib, Agg).

Colours come from ``ClassSpec.colors()`` so a class looks the same in every figure and overlay.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sam_histo.data.types import ClassSpec


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
    ax.set_title(f"Confusion, row-normalised (split {metrics.get('split') or '?'})")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the class's pixels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
    ax.set_title(f"Per class, split {metrics.get('split') or '?'}")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def colorize(labels: np.ndarray, classes: ClassSpec) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 with the class colours (ids outside the classes drawn white)."""
    lut = np.full((max(int(labels.max(initial=0)) + 1, classes.num_classes), 3), 255, np.uint8)
    lut[: classes.num_classes] = np.asarray(classes.colors(), np.uint8)
    return lut[np.asarray(labels, np.int64)]


def overlay_panel(
    image: Optional[np.ndarray], gt: np.ndarray, pred: np.ndarray, classes: ClassSpec, class_id: int
) -> list[np.ndarray]:
    """Three RGB uint8 views of one 2-D image: ground truth, prediction, and the errors of ``class_id``.

    image: (H, W, 3) uint8 or None (a grey background is used); gt, pred: (H, W) ids. The error view marks
    true positives green, false negatives (missed) blue and false positives red.
    """
    base = np.full((*gt.shape, 3), 200, np.uint8) if image is None else np.asarray(image, np.uint8)[..., :3]
    blend = lambda lab: (0.55 * base + 0.45 * colorize(lab, classes)).astype(np.uint8)  # noqa: E731
    g, p = gt == class_id, pred == class_id
    err = (0.6 * base).astype(np.uint8)
    err[g & p] = (40, 200, 40)
    err[g & ~p] = (40, 90, 230)
    err[~g & p] = (230, 40, 40)
    if classes.ignore_index is not None:
        err[gt == classes.ignore_index] = (0, 0, 0)
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
        titles = (["image"] if image is not None else []) + [
            "ground truth", "prediction", f"{class_name}: TP green, missed blue, FP red"]
        fig, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 3.6))
        for ax, view, title in zip(axes, views, titles):
            ax.imshow(view)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        legend = [Patch(color=np.array(col) / 255, label=n) for n, col in zip(classes.names, classes.colors())]
        fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 8), fontsize=7)
        fig.suptitle(f"{tag} {rank}: {name} — {class_name} Dice {score:.3f}", fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
        path = out_dir / f"overlay_{tag}_{rank}_{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
