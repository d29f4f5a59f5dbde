"""The smaller recoverability items: a grey tile is not colourised, a class no mask holds is warned about,
and a stop signal during validation stops at once (with a checkpoint), not at the next epoch's first step."""
import logging
import os
import signal

import numpy as np

from sam_histo.config import ClassWeightConfig, load_config
from sam_histo.data.classstats import ClassStats, class_weights
from sam_histo.training import loop
from test_recovery import tiles  # noqa: F401  (fixture)
from test_training import overrides


def test_a_grey_tile_is_not_colourised_by_stain_normalisation():
    from sam_histo.stain.macenko import MacenkoNormalizer
    from sam_histo.stain.normalize import StainNormalize
    from sam_histo.stain.synthetic import synthetic_tiles

    ref, tile = synthetic_tiles(2, size=128, seed=0)
    t = StainNormalize(MacenkoNormalizer().fit([ref]))
    grey = np.repeat(np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    np.testing.assert_array_equal(t.apply(grey), grey)
    assert t.counter.fallbacks == 1
    assert not np.array_equal(t.apply(tile), tile)  # a stained tile still is normalised


def test_a_class_no_mask_holds_is_warned_about(caplog):
    stats = ClassStats(("outside_roi", "tumor", "stroma", "blood_vessel"), 0,
                       np.array([[5, 10, 30, 0], [0, 20, 10, 0]]))
    with caplog.at_level(logging.WARNING, logger="sam_histo.data"):
        w = class_weights(stats, ClassWeightConfig())
    assert w[3] == 1.0
    assert any("blood_vessel appear in no mask" in r.getMessage() for r in caplog.records)


def test_a_stop_signal_during_validation_stops_after_that_epoch(tiles, tmp_path, monkeypatch):  # noqa: F811
    real = loop.validate_epoch

    def validate_then_signal(run, epoch):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while validating
        return real(run, epoch)

    monkeypatch.setattr(loop, "validate_epoch", validate_then_signal)
    result = loop.train(load_config(None, overrides(tiles, tmp_path, "sig", 1, 3)))
    ckpts = tmp_path / "sig" / "checkpoints"
    assert result["status"] == "preempted"
    assert (ckpts / "LATEST").read_text() == "step_00000001"  # epoch 0's end; no step of epoch 1 ran
    assert not (ckpts / "step_00000002").exists()
