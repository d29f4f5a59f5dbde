"""`sam-histo predict` on a release, and the heatmap options of predict and of the validator."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import sam_histo
from sam_histo.config import ConfigError, load_config
from sam_histo.data.types import DataError
from sam_histo.release.predict import PredictError, main


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    from sam_histo.release.build import make_release

    return make_release(tiny_run, tmp_path_factory.mktemp("pbundle") / "release")[0]


@pytest.fixture(scope="module")
def release(bundle):
    return sam_histo.load_release(bundle)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _probs(release, image):
    from sam_histo.infer.image import semantic_probs

    return semantic_probs(release.model, image, 7, 0)


def _png(path):
    return np.asarray(Image.open(path))


def test_predict_large_image_writes_every_output_at_its_size(bundle, release, tmp_path):
    from sam_histo.infer.rle import decode

    image = _image(150, 200)  # the model input is 64 px
    Image.fromarray(image).save(tmp_path / "big.png")
    assert main(["--release", str(bundle), "--input", str(tmp_path / "big.png"), "--out", str(tmp_path / "o"),
                 "--probs"]) == 0
    label = _png(tmp_path / "o/labels/big.png")
    probs = _probs(release, image)
    assert label.shape == (150, 200)
    np.testing.assert_array_equal(label, probs.argmax(0))
    records = json.loads((tmp_path / "o/rle/big.json").read_text())
    np.testing.assert_array_equal(decode(records, (150, 200), fill=0), label)  # RLE round trip
    assert {r["category_id"] for r in records} == set(np.unique(label).tolist())
    for r in records:
        c = r["category_id"]
        assert r["image_id"] == 0 and r["file_name"] == "big.png" and r["score"] == pytest.approx(probs[c][label == c].mean())
    for c, name in enumerate(release.classes.names[1:], start=1):
        np.testing.assert_array_equal(_png(tmp_path / f"o/probs/big/{c}_{name}.png"), np.rint(probs[c] * 255))
    assert not (tmp_path / "o/probs/big/0_outside_roi.png").exists()
    drawn = _png(tmp_path / "o/overlays/big.png")
    assert drawn.shape[1:] == (200, 3) and drawn.shape[0] > 150  # the tile, then its legend band
    assert (drawn[150:] == 255).mean() > 0.5  # a white band holding swatches and names


def test_predict_folders_formats_and_resume(bundle, release, tmp_path, capsys):
    import tifffile

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    a, b, c = _image(70, 80, 1), _image(64, 64, 2)[..., 0], _image(66, 90, 3)
    tifffile.imwrite(src / "a.tif", np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate")  # planar
    Image.fromarray(b).save(src / "b.jpg", quality=95)  # grey JPEG
    Image.fromarray(c).save(src / "sub/c.png")
    out = tmp_path / "out"
    args = ["--release", str(bundle), "--input", str(src), "--out", str(out), "--no-overlay"]
    assert main(args) == 0
    assert "2 image(s) predicted, 0 already done" in capsys.readouterr().out
    np.testing.assert_array_equal(_png(out / "labels/a.png"), _probs(release, a).argmax(0))
    grey = np.asarray(Image.open(src / "b.jpg").convert("RGB"))
    np.testing.assert_array_equal(_png(out / "labels/b.png"), _probs(release, grey).argmax(0))
    assert not (out / "overlays").exists() and not (out / "labels/sub").exists()
    stamp = (out / "labels/a.png").stat().st_mtime_ns
    (out / "rle/b.json").unlink()  # an interrupted run: b unfinished
    assert main([*args, "--recursive"]) == 0
    assert "2 image(s) predicted, 1 already done" in capsys.readouterr().out  # b again, and sub/c
    assert (out / "labels/a.png").stat().st_mtime_ns == stamp and (out / "rle/b.json").is_file()
    assert _png(out / "labels/sub/c.png").shape == (66, 90)
    assert not list(out.rglob(".*"))  # no temporary files left


def test_predict_heatmap_is_the_zscore_threshold_cleanup_of_the_class_probability(bundle, release, tmp_path):
    """Oracle: the tumour probability of both tiles of one slide, z-scored with their pooled mean and std,
    thresholded, components under 5 px removed (scipy labelling), holes filled."""
    images = {"s1_a": _image(64, 96, 4), "s1_b": _image(80, 64, 5), "s2_a": _image(64, 64, 6)}
    for k, im in images.items():
        Image.fromarray(im).save(tmp_path / f"{k}.png")
    out = tmp_path / "o"
    assert main(["--release", str(bundle), "--input", str(tmp_path), "--out", str(out), "--no-rle",
                 "--heatmap-class", "tumor", "--threshold", "0.3", "--min-size", "5",
                 "--slide-pattern", "^([^_]+)"]) == 0
    tumor = {k: _probs(release, im)[1] for k, im in images.items()}
    for slide, keys in (("s1", ["s1_a", "s1_b"]), ("s2", ["s2_a"])):
        pooled = np.concatenate([tumor[k].ravel() for k in keys]).astype(np.float64)
        for k in keys:
            np.testing.assert_array_equal(np.load(out / f"scores/{k}.1_tumor.npy"), tumor[k])
            mask = (tumor[k] - pooled.mean()) / pooled.std() >= 0.3
            lab, n = ndimage.label(mask)
            sizes = ndimage.sum(mask, lab, range(1, n + 1))
            mask = ndimage.binary_fill_holes(np.isin(lab, 1 + np.flatnonzero(sizes >= 5)))
            np.testing.assert_array_equal(_png(out / f"heatmaps/{k}.png"), mask.astype(np.uint8) * 255)
    rep = json.loads((out / "heatmap.json").read_text())
    assert rep["threshold"] == 0.3 and rep["slides"] == {"s1": 2, "s2": 1} and rep["units"] == "z-scores per slide"
    assert [s["step"] for s in rep["steps"]] == ["zscore", "clean"]


def test_predict_heatmap_reuses_the_release_validation_threshold(bundle, release, tmp_path, capsys):
    chosen = release.metrics["val"]["heatmap"]
    Image.fromarray(_image(64, 64, 7)).save(tmp_path / "t.png")
    out = tmp_path / "o"
    assert main(["--release", str(bundle), "--input", str(tmp_path / "t.png"), "--out", str(out),
                 "--heatmap-class", "tumor"]) == 0
    rep = json.loads((out / "heatmap.json").read_text())
    assert rep["threshold"] == chosen["threshold"] and "release's validation" in rep["threshold_source"]
    assert rep["settings"]["min_size"] == chosen["settings"]["min_size"] == 4
    with pytest.raises(PredictError, match="give --threshold T.*chosen under other settings"):
        main(["--release", str(bundle), "--input", str(tmp_path / "t.png"), "--out", str(out),
              "--heatmap-class", "tumor", "--no-zscore"])
    with pytest.raises(PredictError, match="give --threshold T; an IoU-optimal one needs labels"):
        main(["--release", str(bundle), "--input", str(tmp_path / "t.png"), "--out", str(out),
              "--heatmap-class", "stroma"])
    with pytest.raises(PredictError, match="'glass' is not a class of this release"):
        main(["--release", str(bundle), "--input", str(tmp_path / "t.png"), "--out", str(out),
              "--heatmap-class", "glass", "--threshold", "1"])


def test_predict_refuses_bad_inputs_and_tampered_bundles(bundle, tmp_path):
    out = tmp_path / "o"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        main(["--release", str(bundle), "--input", str(tmp_path / "notes.txt"), "--out", str(out)])
    Image.fromarray(np.full((32, 32), 4000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match="deep.png: uint16 pixels; predict reads 8-bit images"):
        main(["--release", str(bundle), "--input", str(tmp_path / "deep.png"), "--out", str(out)])
    Image.fromarray(_image(8, 8)).save(tmp_path / "x.png")
    Image.fromarray(_image(8, 8)).save(tmp_path / "x.jpg")
    with pytest.raises(DataError, match=r"x\.jpg and .*x\.png would write the same outputs \(x\)"):
        main(["--release", str(bundle), "--input", str(tmp_path), "--out", str(out)])
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "classes.json").write_text((broken / "classes.json").read_text().replace("tumor", "tumour"))
    with pytest.raises(PredictError, match="classes.json: sha256 differs"):
        main(["--release", str(broken), "--input", str(tmp_path / "deep.png"), "--out", str(out)])


def test_prompted_release_names_masks_with_clip_or_says_what_it_lacks(tiny_run, tmp_path):
    """A prompted-mode release has no class-token head: automatic masks named by CLIP with the bundle's prompt
    file. Its config has a random-init CLIP, which cannot be rebuilt: refused until clip.weights is given."""
    import torch

    from sam_histo.config import ClipConfig
    from sam_histo.models.clip import build_clip
    from sam_histo.models.weights import save_state_dict
    from sam_histo.release.build import make_release

    run = tmp_path / "prompted_run"
    shutil.copytree(tiny_run, run)
    cfg_text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg_text.replace("mode: semantic", "mode: prompted"))
    bundle = make_release(run, tmp_path / "rel", recompute=False)[0]
    assert not (bundle / "semantic_head.safetensors").exists()
    Image.fromarray(_image(96, 80, 8)).save(tmp_path / "p.png")
    args = ["--release", str(bundle), "--input", str(tmp_path / "p.png"), "--out", str(tmp_path / "o")]
    with pytest.raises(PredictError, match="clip.weights=null .*random weights.*clip.weights=/path"):
        main(args)
    torch.manual_seed(3)
    clip = build_clip(ClipConfig(arch="tiny"))
    save_state_dict(clip.module, tmp_path / "clip.safetensors")
    assert main([*args, f"clip.weights={tmp_path / 'clip.safetensors'}"]) == 0
    label = _png(tmp_path / "o/labels/p.png")
    assert label.shape == (96, 80) and set(np.unique(label)) <= set(range(7))
    with pytest.raises(ConfigError, match="predict takes only clip.\\* and zeroshot.\\*"):
        main([*args, "model.image_size=128"])


def test_validator_heatmap_block_matches_an_independent_recount(tiny_run, tmp_path):
    """The heatmap block of `sam-histo validate ... heatmap.class_name=tumor`: the z-score step's IoU equals
    a recount from the model's probabilities, and at dataset level IoU- and F1-optimal thresholds agree."""
    from sam_histo.data.dataset import build_dataset
    from sam_histo.infer.image import semantic_probs
    from sam_histo.eval.validator import main as validate_main
    from sam_histo.models.load import load_model

    out = tmp_path / "val"
    assert validate_main(["--config", str(tiny_run / "config.yaml"), "--checkpoint", str(tiny_run), "--out", str(out),
                          "heatmap.class_name=tumor", "heatmap.average=dataset", "heatmap.min_size=0",
                          "heatmap.threshold=auto-f1"]) == 0
    block = json.loads((out / "metrics.json").read_text())["heatmap"]
    choice = block["threshold_choice"]
    assert block["rule"] == "auto-f1" and choice["average"] == "dataset"
    assert block["threshold"] == choice["f1_optimal"]["threshold"] == choice["iou_optimal"]["threshold"]
    assert [s["step"] for s in block["steps"]] == ["raw", "zscore", "clean"]
    cfg = load_config(tiny_run / "config.yaml")
    model = load_model(cfg.model, 7, tiny_run).eval()
    val = build_dataset(cfg.data, "val")
    samples = [val[i] for i in range(len(val))]
    probs = [semantic_probs(model, s.image, 7, 0)[1] for s in samples]
    pooled = np.concatenate([p.ravel() for p in probs]).astype(np.float64)  # one slide in this split
    assert block["n_slides"] == 1 and block["n_images"] == len(samples)
    tp = fp = fn = 0
    for p, s in zip(probs, samples):
        keep = s.mask != 0
        z = ((p - pooled.mean()) / pooled.std()).astype(np.float32)  # z-scores are kept as float32
        pred = (z >= block["threshold"])[keep]
        truth = (s.mask == 1)[keep]
        tp, fp, fn = tp + np.sum(pred & truth), fp + np.sum(pred & ~truth), fn + np.sum(~pred & truth)
    assert block["steps"][1]["iou"] == pytest.approx(tp / (tp + fp + fn))
    report = (out / "report.md").read_text()
    assert "## Heatmap: tumor (split `val`" in report and "| zscore |" in report and "coincide" in report
    with pytest.raises(ConfigError, match="heatmap.class_name needs class probabilities"):
        validate_main(["--config", str(tiny_run / "config.yaml"), "--checkpoint", str(tiny_run),
                       "--out", str(out), "model.mode=prompted", "model.strict=false"])


def test_stain_normalised_release_carries_its_reference(tiny_run, tmp_path):
    """A run trained on Reinhard-normalised tiles: the bundle holds the reference tile, and predict normalises
    new images to it even after the original reference is gone."""
    from sam_histo.augment import build_eval_transform
    from sam_histo.config import StainConfig
    from sam_histo.infer.image import semantic_probs
    from sam_histo.release.build import ReleaseError, make_release

    ref = tmp_path / "ref.png"
    Image.fromarray(_image(48, 48, 9)).save(ref)
    run = tmp_path / "stain_run"
    shutil.copytree(tiny_run, run)
    text = (run / "config.yaml").read_text().replace("method: none", "method: reinhard")
    (run / "config.yaml").write_text(text.replace("reference: null", f"reference: {ref}"))
    bundle = make_release(run, tmp_path / "rel", recompute=False)[0]
    assert (bundle / "stain_reference/ref.png").read_bytes() == ref.read_bytes()
    image = _image(70, 70, 10)
    expected = build_eval_transform(StainConfig(method="reinhard", reference=str(ref)), 64)(image=image)["image"]
    ref.unlink()
    release = sam_histo.load_release(bundle)
    assert release.config.stain.reference == str(bundle / "stain_reference/ref.png")
    Image.fromarray(image).save(tmp_path / "n.png")
    assert main(["--release", str(bundle), "--input", str(tmp_path / "n.png"), "--out", str(tmp_path / "o")]) == 0
    np.testing.assert_array_equal(_png(tmp_path / "o/labels/n.png"),
                                  semantic_probs(release.model, expected, 7, 0).argmax(0))
    assert not np.array_equal(expected, image)
    with pytest.raises(ReleaseError, match="stain.reference=.*ref.png is not on this machine"):
        make_release(run, tmp_path / "rel2")


def test_predict_tissue_mask_gives_glass_the_ignore_id_and_keeps_it_out_of_heatmaps(bundle, release, tmp_path):
    """Default for H&E: glass (bright grey) is outside_roi in the label map and never in the heatmap; the
    tissue half keeps the model's labels. --no-tissue-mask labels every pixel."""
    from sam_histo.stain.tissue import tissue_mask

    image = _image(64, 128, 7)
    image[:, 64:] = 245  # glass: the right half
    Image.fromarray(image).save(tmp_path / "t.png")
    out = tmp_path / "o"
    assert main(["--release", str(bundle), "--input", str(tmp_path / "t.png"), "--out", str(out), "--no-rle",
                 "--heatmap-class", "tumor", "--threshold", "-100", "--min-size", "0"]) == 0
    tissue = tissue_mask(image, release.config.data.tissue)
    assert tissue[:, :60].all() and not tissue[:, 68:].any()
    label = _png(out / "labels/t.png")
    np.testing.assert_array_equal(label[tissue], _probs(release, image).argmax(0)[tissue])
    assert (label[~tissue] == 0).all()  # outside_roi: the ignore id (no background class in BCSS)
    heat = _png(out / "heatmaps/t.png")
    assert (heat[tissue] == 255).all() and (heat[~tissue] == 0).all()  # threshold -100 z: every tissue pixel
    np.testing.assert_array_equal(_png(out / "tissue/t.png") > 0, tissue)
    assert main(["--release", str(bundle), "--input", str(tmp_path / "t.png"), "--out", str(tmp_path / "n"),
                 "--no-rle", "--no-tissue-mask"]) == 0
    assert (_png(tmp_path / "n/labels/t.png") > 0).all()


class _ConvModel(torch.nn.Module):
    """A stand-in with what semantic_predict_fn needs (preprocess, forward, parameters): an asymmetric conv,
    so its predictions change under flips as a random SAM2 head's would."""

    image_size = 32

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 5, padding=2)

    def preprocess(self, tiles):
        return torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 64.0

    def forward(self, x):
        return self.conv(x)


def test_tta_averages_the_flips_of_every_window(monkeypatch):
    """eval.tta: each window's probabilities are the mean of its four flips, flipped back (an oracle loop per
    window and flip); so a flipped tile gets the flipped prediction, which the plain model does not."""
    from sam_histo.infer.image import semantic_predict_fn

    model = _ConvModel()
    tiles = np.stack([_image(32, 32, seed) for seed in (1, 2)])
    plain, tta = semantic_predict_fn(model, 0), semantic_predict_fn(model, 0, tta=True)
    oracle = np.zeros((2, 3, 32, 32), np.float64)
    for i in range(2):
        for axes in ((), (1,), (0,), (0, 1)):
            view = np.flip(tiles[i], axes) if axes else tiles[i]
            p = plain(np.ascontiguousarray(view)[None])[0]
            oracle[i] += np.flip(p, tuple(a + 1 for a in axes)) if axes else p
    got = tta(tiles)
    assert got.shape == (2, 3, 32, 32) and got.dtype == np.float32 and (got[:, 0] == 0).all()  # 0 ignored
    np.testing.assert_allclose(got, oracle / 4, atol=1e-6)
    flipped = np.ascontiguousarray(tiles[:, :, ::-1])
    np.testing.assert_allclose(tta(flipped), got[:, :, :, ::-1], atol=1e-6)
    assert np.abs(plain(flipped) - plain(tiles)[:, :, :, ::-1]).max() > 0.05  # the plain model is not symmetric


@pytest.mark.parametrize("flag, want", [([], False), (["--tta"], True)])
def test_predict_tta_flag_reaches_every_semantic_path(bundle, tmp_path, monkeypatch, flag, want):
    """--tta (default: the release's eval.tta, false) reaches the streamed and the whole-image paths."""
    from sam_histo.infer import image as image_mod

    seen, real = [], image_mod.semantic_predict_fn
    monkeypatch.setattr(image_mod, "semantic_predict_fn", lambda *a, **k: seen.append(k.get("tta", a[3:4] == (True,)))
                        or real(*a, **k))
    Image.fromarray(_image(90, 80, 5)).save(tmp_path / "big.png")  # streams (at least one window)
    Image.fromarray(_image(40, 30, 6)).save(tmp_path / "small.png")  # smaller than a window: whole image
    assert main(["--release", str(bundle), "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--no-rle",
                 *flag]) == 0
    assert len(seen) == 2 and set(seen) == {want}


def _with_eval(release, **changes):
    import dataclasses

    cfg = release.config
    return dataclasses.replace(release, config=dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **changes)))


def test_multi_scale_tta_is_the_mean_of_predictions_at_each_pretended_resolution():
    """eval.tta_scales: the image resized by each scale, predicted and brought back, averaged; the same as
    predicting it once per scale as if its microns per pixel were scale x the model's."""
    from sam_histo.infer.image import semantic_probs

    model, image, scales = _ConvModel(), _image(70, 90, 11), [0.8, 1.0, 1.25]
    got = semantic_probs(model, image, 3, 0, scales=scales)
    one_by_one = [semantic_probs(model, image, 3, 0, mpp=0.5 * s, target_mpp=0.5) for s in scales]
    assert got.shape == (3, 70, 90) and got.dtype == np.float32 and (got[0] == 0).all()
    np.testing.assert_allclose(got, np.mean(one_by_one, 0), atol=1e-6)
    np.testing.assert_allclose(got.sum(0), 1, atol=1e-5)
    assert np.abs(got - one_by_one[1]).max() > 0.05  # the other scales changed it
    np.testing.assert_array_equal(semantic_probs(model, image, 3, 0, scales=[1.0]), one_by_one[1])


def test_predict_cleans_small_regions_and_both_options_take_the_whole_image_path(release):
    """eval.min_region_um2: predict's label map has no region under that area (pixels at the image's mpp,
    else the release's target or data mpp) and is the clean-up of the argmax; multi-scale TTA or clean-up
    turn streaming off (both need the whole image)."""
    from skimage.measure import label as regions

    from sam_histo.infer.image import region_pixels
    from sam_histo.infer.postprocess import absorb_small_regions
    from sam_histo.release.predict import make_predictor
    from sam_histo.release.stream import can_stream

    image = _image(96, 96, 12)
    plain_label, probs = make_predictor(release)(image)
    cleaned = _with_eval(release, min_region_um2=4.0)
    assert region_pixels(4.0, 0.5) == 16 and region_pixels(4.0, None, 0.25) == 64 and region_pixels(0, 0.5) == 0
    label, probs2 = make_predictor(cleaned)(image, 0.5)
    np.testing.assert_array_equal(probs2, probs)
    np.testing.assert_array_equal(label, absorb_small_regions(probs.argmax(0), 16))
    assert (label != plain_label).any() and (label != absorb_small_regions(probs.argmax(0), 64)).any()
    before, after = (np.bincount(regions(m + 1, background=0, connectivity=1).ravel())[1:] for m in (plain_label, label))
    assert (after < 16).sum() < (before < 16).sum() / 2  # one pass: a speck among specks may stay
    assert can_stream(release, 96, 96)
    assert not can_stream(cleaned, 96, 96) and not can_stream(_with_eval(release, tta_scales=[0.8, 1.0]), 96, 96)
