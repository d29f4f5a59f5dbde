"""Learning test: the trainer overfits the tiny model on a synthetic EM volume in prompted mode (one point
per vesicle, background clicks for the object score), then the 3-D pipeline finds the vesicles.

Measured through ``training.loop.train`` on this volume (12 x 64 x 64, 8 vesicles of 233-665 voxels; 630
steps of batch 4, 150 of them with the encoder frozen; about 45 s on 2 CPU cores): seeds 0-3 reached
matched F1 1.00 / 1.00 / 0.94 / 0.94 and adapted Rand error 0.055 / 0.043 / 0.082 / 0.081; 450 steps gave
errors up to 0.22 on some seeds, and the untrained model finds nothing (error 0.751, F1 0). The pass
marks (F1 >= 0.8: at most one vesicle missed plus one false; error <= 0.15: about twice the worst seed)
leave room for platform differences and still fail an under-trained model.
"""
import dataclasses

import numpy as np
import pytest

from sam_histo.config import EmSweepConfig, load_config
from sam_histo.data.vesicle import Vesicle
from sam_histo.em.volume import evaluate_volume, sweep_volume
from sam_histo.eval.validator import validate_split
from sam_histo.models.load import load_model
from sam_histo.models.sam import build_sam
from sam_histo.training.loop import train

STEPS_PER_EPOCH, EPOCHS = 70, 9


def overfit_config(root, out):
    return load_config("configs/vesicle.yaml", [
        f"data.root={root}", "data.val_fraction=0", "model.arch=tiny", "model.image_size=64",
        "sampling.oversample=auto", f"sampling.iter_per_epoch={4 * STEPS_PER_EPOCH}", "train.batch_size=4",
        f"train.epochs={EPOCHS}", "train.phases=[{start_epoch: 0, stages: none, lr: 2.0e-3, warmup_steps: 50, "
        "min_lr: 1.0e-4}, {start_epoch: 3, stages: all, lr: 2.0e-3, min_lr: 1.0e-4}]",
        # overfit the volume as it is: no flips or warps (the tiny random model needs several times the steps
        # to become equivariant), no intensity changes
        "augment.flip=0", "augment.rot90=0", "augment.affine=0", "augment.noise=0", "augment.brightness_contrast=0",
        "augment.cutout=0", "prompts.max_objects=16", "prompts.min_area=4", "train.log_with=[]",
        "train.num_workers=0", "train.checkpoint_every_steps=0", f"output_dir={out}", "name=em",
        # decoding for 64 px slices
        "em.points_per_side=16", "em.mask_threshold=-1.0", "em.iou_thresh=0.0", "em.stability_thresh=0.8",
        "em.min_size=15", "em.max_size=300", "em.min_voxels=20", "em.tta=false",
    ])


@pytest.mark.slow
def test_trainer_overfit_recovers_the_vesicles_in_3d(vesicle_root, tmp_path):
    cfg = overfit_config(vesicle_root, tmp_path)
    assert cfg.prompts.n_background > 0  # the recipe's background clicks train the object score
    adapter = Vesicle(cfg.data, "all")
    assert adapter.label_volume().shape == (12, 64, 64) and len(np.unique(adapter.label_volume())) - 1 == 8
    before = evaluate_volume(build_sam(cfg.model), adapter, cfg.em, progress=False)["instances"]
    result = train(cfg)
    assert result["status"] == "finished"
    model = load_model(cfg.model, None, result["run_dir"], which="last").eval()
    after = validate_split(model, cfg, "all", out_dir=tmp_path / "eval", checkpoint="tiny, 630 overfit steps")
    inst = after["instances"]
    assert before["f1_at_0.5"] < 0.2
    assert inst["n_gt"] == 8 and inst["f1_at_0.5"] >= 0.8, inst
    assert inst["adapted_rand_error"] <= 0.15, inst
    assert (tmp_path / "eval" / "report.md").is_file()
    # The sweep decodes the cached logits exactly as a direct run would: its row for this setting agrees.
    grid = EmSweepConfig(mask_threshold=[-1.0, 0.0], iou_thresh=[0.0], stability_thresh=[0.8], min_size=[15])
    sweep = sweep_volume(model, adapter, dataclasses.replace(cfg.em, sweep=grid), progress=False)
    row = next(r for r in sweep.rows if r["mask_threshold"] == -1.0)
    assert row["adapted_rand_error"] == pytest.approx(inst["adapted_rand_error"], abs=1e-12)
    assert sweep.rows[sweep.best]["adapted_rand_error"] <= inst["adapted_rand_error"]
