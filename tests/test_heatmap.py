"""The HeatmapConfig-driven pipeline: z-score, threshold, clean-up, and the effect each step reports."""
import json

import numpy as np
import pytest

from sam_histo.config import ConfigError, HeatmapConfig, load_config
from sam_histo.infer.heatmap import run_heatmap


def slides_with_specks():
    """Two slides x two tiles, the same blob per tile, baselines 0.2 and 0.6, plus specks and a hole."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    scores, targets, slides = [], [], []
    for slide, base in (("A", 0.2), ("B", 0.6)):
        for k in range(2):
            target = (yy - 12 - 6 * k) ** 2 + (xx - 14) ** 2 < 49
            s = base + 0.25 * target + rng.normal(0, 0.01, target.shape)
            s[2, 2 + 10 * k] = s[28, 30] = base + 0.25  # false-positive specks
            s[12 + 6 * k, 14] = base  # a hole inside the blob
            scores.append(s)
            targets.append(target)
            slides.append(slide)
    return scores, targets, slides


def pooled_iou(masks, targets):
    tp = sum(np.sum(m & t) for m, t in zip(masks, targets))
    union = sum(np.sum(m | t) for m, t in zip(masks, targets))
    return tp / union


def test_each_step_reports_its_effect_and_helps():
    scores, targets, slides = slides_with_specks()
    cfg = HeatmapConfig(class_name="tumor", zscore=True, threshold="auto-iou", min_size=3, fill_holes=True)
    res = run_heatmap(scores, cfg, slides, targets)
    assert [r["step"] for r in res.steps] == ["raw", "zscore", "clean"]
    ious = [r["iou"] for r in res.steps]
    assert ious[0] < 0.6 < ious[1] < ious[2] == 1.0
    assert [r["iou_before"] for r in res.steps] == [None, ious[0], ious[1]]
    assert res.steps[-1]["iou"] == pytest.approx(pooled_iou(res.masks, targets))
    assert res.steps[1]["iou"] == pytest.approx(pooled_iou([s >= res.threshold for s in res.scores], targets))
    assert res.rule == "auto-iou" and res.sweep is not None
    report = json.loads(json.dumps(res.report()))
    assert report["threshold_choice"]["iou_optimal"]["threshold"] == res.threshold
    assert all(m.dtype == bool and m.shape == (32, 32) for m in res.masks)


def test_predict_path_without_labels_reuses_the_chosen_threshold():
    scores, targets, slides = slides_with_specks()
    cfg = HeatmapConfig(class_name="tumor", threshold="auto-f1", min_size=3)
    with pytest.raises(ValueError, match=r"heatmap.threshold=auto-f1 needs labelled maps.*pass the threshold"):
        run_heatmap(scores, cfg, slides)
    chosen = run_heatmap(scores, cfg, slides, targets)
    res = run_heatmap(scores, cfg, slides, threshold=chosen.threshold)
    assert res.rule == "given" and [r["step"] for r in res.steps] == ["zscore", "clean"]
    assert "iou" not in res.steps[0]
    for a, b in zip(res.masks, chosen.masks):
        np.testing.assert_array_equal(a, b)
    assert res.steps[-1]["positive_fraction"] == pytest.approx(np.mean(res.masks))


def test_fixed_probability_threshold_without_zscore():
    scores, targets, slides = slides_with_specks()
    cfg = HeatmapConfig(zscore=False, threshold=0.55, min_size=0, fill_holes=False)
    res = run_heatmap(scores, cfg, slides, targets)
    assert [r["step"] for r in res.steps] == ["threshold"] and res.rule == "fixed"
    for m, s in zip(res.masks, scores):
        np.testing.assert_array_equal(m, s >= 0.55)  # paints slide B's whole background
    assert res.masks[2].all() and res.steps[0]["iou"] == pytest.approx(pooled_iou(res.masks, targets))


def test_heatmap_config_section_and_its_checks():
    cfg = load_config(None, ["data.classes=[background, tumor]", "heatmap.class_name=tumor",
                             "heatmap.threshold=1.5", "heatmap.min_size=5"])
    assert cfg.heatmap.threshold == 1.5 and cfg.heatmap.min_size == 5 and cfg.heatmap.zscore
    assert load_config(None, ["heatmap.threshold=auto-f1"]).heatmap.threshold == "auto-f1"
    cases = [
        (["heatmap.threshold=auto"], r"heatmap.threshold: 'auto' matches none of .*'auto-iou' \| 'auto-f1'"),
        (["heatmap.zscore=false", "heatmap.threshold=1.5"], r"heatmap.threshold=1.5 with heatmap.zscore=false"),
        (["data.classes=[background, tumor]", "heatmap.class_name=tumour"],
         r"heatmap.class_name='tumour' is not in data.classes.*did you mean 'tumor'"),
        (["heatmap.min_size=-2"], r"heatmap.min_size=-2 must be >= 0"),
        (["heatmap.connectivity=3"], r"heatmap.connectivity=3 must be 1"),
        (["heatmap.threshold=.nan"], r"heatmap.threshold=nan must be a finite number"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)
