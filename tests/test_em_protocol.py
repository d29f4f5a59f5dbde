"""One protocol selects and reports: the trainer's epoch validation of an EM volume is the final report's
3-D decoding, and headlines of class sets with a background class are macro over the foreground."""
import types

import numpy as np
import pytest

from sam_histo.config import load_config
from sam_histo.data.types import ClassSpec
from sam_histo.eval import validator as V
from sam_histo.scoring.metrics_json import metrics_json


def test_headline_is_macro_over_foreground_with_background_apart():
    classes = ClassSpec(("background", "vesicle"))
    counts = np.array([[970, 15], [15, 0]])  # background Dice ~0.985, vesicle never found
    m = metrics_json(classes, counts, split="val")
    assert m["macro"]["dice"] == pytest.approx((2 * 970 / (2 * 970 + 30) + 0.0) / 2)  # the old headline
    assert m["foreground"]["macro"]["dice"] == 0.0 and m["foreground"]["over"] == ["vesicle"]
    assert m["foreground"]["background_scores"]["dice"] == pytest.approx(2 * 970 / (2 * 970 + 30))
    line = V.headline(m)
    assert line.startswith("val: macro Dice 0.000 IoU 0.000 (over 1 foreground classes present; background "
                           "Dice 0.985 apart)")
    assert V.selection_scores(m)["dice"] == 0.0
    bcss = metrics_json(ClassSpec(("outside_roi", "tumor", "stroma"), ignore_index=0),
                        np.array([[0, 0, 0], [0, 5, 1], [0, 1, 5]]))
    assert "foreground" not in bcss and V.selection_scores(bcss) is bcss["macro"]


def test_em_epoch_validation_uses_the_final_reports_protocol(vesicle_root, tmp_path, monkeypatch):
    from sam_histo.training import checkpoint as ck
    from sam_histo.training import loop
    from sam_histo.training.build import JsonlLog
    from sam_histo.training.runtime import TrainState

    cfg = load_config("vesicle", [f"data.root={vesicle_root}", "model.arch=tiny", "train.log_with=[]"])
    assert cfg.eval.instances
    final = {"split": "val", "macro": {"dice": 0.5, "iou": 0.4}, "micro": {}, "per_class": {},
             "foreground": {"macro": {"dice": 0.1, "iou": 0.05}, "over": ["vesicle"], "background": "background",
                            "background_scores": {"dice": 0.9}}}
    calls = []
    monkeypatch.setattr(V, "validate_split", lambda *a, **k: calls.append("volume") or final)
    monkeypatch.setattr(V, "validate", lambda *a, **k: pytest.fail("prompted 2-D validation chose the best"))
    saved = []
    monkeypatch.setattr(ck, "save_best", lambda acc, run_dir, model, state: saved.append(state))
    acc = types.SimpleNamespace(print=lambda *a: None, is_local_main_process=False, is_main_process=True,
                                log=lambda *a, **k: None)
    run = types.SimpleNamespace(cfg=cfg, accelerator=acc, state=TrainState(), run_dir=tmp_path, model=None,
                                val_data=object(), jsonl=JsonlLog(tmp_path / "m.jsonl", True))
    loop.validate_epoch(run, 0)
    assert calls == ["volume"] and saved[0]["value"] == 0.1 and run.state.best == 0.1  # foreground macro
