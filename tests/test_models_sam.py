"""SamHisto against sam2's own predictor, transforms, generator and video predictor (the oracles)."""
import time

import numpy as np
import pytest
import torch

from sam_histo.config import ConfigError, ModelConfig
from sam_histo.data.types import Prompts
from sam_histo.models import archs
from sam_histo.models.sam import build_sam, build_video_predictor, init_video_state


def _tiny(size=64, classes=None, **kw):
    return build_sam(ModelConfig(arch="tiny", image_size=size, **kw), classes)


def _prompts(points, labels, boxes=None, has_box=None, classes=None):
    points = np.asarray(points, np.float32)
    k = points.shape[0]
    return Prompts(points=points, point_labels=np.asarray(labels, np.int32),
                   boxes=None if boxes is None else np.asarray(boxes, np.float32),
                   has_box=np.zeros(k, bool) if has_box is None else np.asarray(has_box, bool),
                   class_ids=np.arange(k, dtype=np.int64) if classes is None else np.asarray(classes),
                   targets=np.zeros((k, 4, 4), bool))


def test_tiny_is_small_and_sizes_follow_image_size():
    for size in (64, 96, 160):
        model = _tiny(size)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000
        feats = model.encode(model.preprocess(np.zeros((2, 50, 70, 3), np.uint8)))
        assert feats.image_embed.shape == (2, 32, size // 16, size // 16)
        assert [f.shape[-1] for f in feats.high_res_feats] == [size // 4, size // 8]


def test_arch_names_and_errors():
    assert archs.canonical_name("hiera_t") == "sam2.1_hiera_t"
    assert archs.canonical_name("sam2.1_hiera_base_plus") == "sam2.1_hiera_b+"
    assert archs.canonical_name("sam2-hiera-large") == "sam2_hiera_l"
    assert archs.canonical_name("TINY") == "tiny"
    with pytest.raises(ConfigError, match="did you mean 'sam2.1_hiera_t'"):
        build_sam(ModelConfig(arch="sam2.1_hiera_tt"))
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_sam(ModelConfig(arch="tiny", image_size=100))
    with pytest.raises(ConfigError, match=r"\+\+model.nope"):
        build_sam(ModelConfig(arch="tiny", image_size=64, overrides=["model.nope=1"]))


def test_arch_from_yaml_path_with_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((archs.sam2_package_dir() / archs.PACKAGED["sam2.1_hiera_t"]).read_text())
    tiny = [o for o in archs.SMALL["tiny"][1]()]
    model = build_sam(ModelConfig(arch=str(path), image_size=64, overrides=tiny))
    assert model.image_size == 64 and model.sam.image_encoder.trunk.stage_ends == [0, 2, 4, 5]


def test_preprocess_matches_sam2_transforms():
    from sam2.utils.transforms import SAM2Transforms

    model = _tiny(96)
    image = np.random.default_rng(1).integers(0, 256, (70, 130, 3), dtype=np.uint8)
    expected = SAM2Transforms(96, 0.0)(image)[None]
    assert torch.equal(model.preprocess(image), expected)
    as_float = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255
    assert torch.allclose(model.preprocess(as_float), expected, atol=1e-6)


def _predictor_reference(model, image, prompts, multimask):
    """Per-object SAM2ImagePredictor calls (boxes alone, points alone), logits at the image size."""
    pred = model.predictor()
    pred.set_image(image)
    out = []
    for k in range(len(prompts)):
        if prompts.has_box[k]:
            masks, iou, low = pred.predict(box=prompts.boxes[k], multimask_output=multimask, return_logits=True)
        else:
            masks, iou, low = pred.predict(prompts.points[k], prompts.point_labels[k],
                                           multimask_output=multimask, return_logits=True)
        out.append((masks, iou))
    return out


@pytest.mark.parametrize("multimask", [True, False])
def test_prompted_forward_equals_predictor_tiny(multimask):
    model = _tiny(96).eval()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 80, 120, 3), dtype=np.uint8)
    prompts = [
        _prompts([[[10, 20], [60, 30]], [[100, 70], [0, 0]], [[5, 5], [6, 6]]], [[1, 0], [1, -1], [1, 1]],
                 boxes=[[0, 0, 1, 1], [0, 0, 1, 1], [20, 10, 90, 60]], has_box=[False, False, True]),
        _prompts([[[40, 40]]], [[1]]),
    ]
    with torch.no_grad():
        feats = model.encode(model.preprocess(images))
        out = model.forward_prompted(feats, prompts, multimask=multimask, orig_hw=(80, 120))
    m = 3 if multimask else 1
    assert out.logits.shape == (4, m, 80, 120) and out.low_res_logits.shape == (4, m, 24, 24)
    assert out.image_index.tolist() == [0, 0, 0, 1] and out.class_ids.tolist() == [0, 1, 2, 0]
    assert out.object_score.shape == (4, 1)
    n = 0
    for i in range(2):
        for masks, iou in _predictor_reference(model, images[i], prompts[i], multimask):
            assert (out.logits[n] - torch.as_tensor(masks)).abs().max() < 1e-4
            assert (out.iou_pred[n] - torch.as_tensor(iou)).abs().max() < 1e-4
            n += 1


def test_prompted_forward_with_mask_input_equals_predictor():
    model = _tiny(64).eval()
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask_in = torch.randn(1, 1, 16, 16)
    pred = model.predictor()
    pred.set_image(image)
    masks, _, _ = pred.predict(np.array([[30.0, 20.0]]), np.array([1]), mask_input=mask_in[0].numpy(),
                               multimask_output=False, return_logits=True)
    with torch.no_grad():
        feats = model.encode(model.preprocess(image))
        out = model.forward_prompted(feats, [_prompts([[[30, 20]]], [[1]])], multimask=False,
                                     orig_hw=(64, 64), mask_inputs=[mask_in])
    assert (out.logits[0] - torch.as_tensor(masks)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="low-res logits"):
        model.forward_prompted(feats, [_prompts([[[30, 20]]], [[1]])], mask_inputs=[torch.zeros(1, 1, 8, 8)])


def test_prompted_forward_equals_predictor_hiera_t_1024():
    """Random-init hiera_t at the official size: one image, one point. About 5 s on 2 CPU cores."""
    t0 = time.perf_counter()
    model = build_sam(ModelConfig(arch="sam2.1_hiera_t", image_size=1024)).eval()
    image = np.random.default_rng(4).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    prompts = _prompts([[[300, 700]]], [[1]])
    (masks, _), = _predictor_reference(model, image, prompts, True)
    with torch.no_grad():
        out = model.forward_prompted(model.encode(model.preprocess(image)), [prompts], orig_hw=(1024, 1024))
    assert (out.logits[0] - torch.as_tensor(masks)).abs().max() < 1e-4
    print(f"hiera_t 1024 predictor equality: {time.perf_counter() - t0:.1f} s")


def test_prompted_forward_is_differentiable_and_frames_agree():
    model = _tiny(64).train()
    pixels = model.preprocess(np.random.default_rng(5).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    prompts = [_prompts([[[8, 8]]], [[1]])]
    out = model(pixels, prompts, orig_hw=(32, 32))
    # orig_hw None means prompts in the 64 x 64 model frame: the same point doubled.
    same = model(pixels, [_prompts([[[16, 16]]], [[1]])])
    assert torch.allclose(out.low_res_logits, same.low_res_logits, atol=1e-5)
    (out.logits.mean() + out.iou_pred.sum() + out.object_score.sum()).backward()
    for name in ("sam.image_encoder.trunk.patch_embed.proj.weight", "sam.sam_prompt_encoder.point_embeddings.1.weight",
                 "sam.sam_mask_decoder.output_hypernetworks_mlps.1.layers.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_no_prompts_gives_empty_output():
    model = _tiny(64)
    feats = model.encode(model.preprocess(np.zeros((1, 64, 64, 3), np.uint8)))
    out = model.forward_prompted(feats, [_prompts(np.zeros((0, 1, 2)), np.zeros((0, 1)))])
    assert out.logits.shape == (0, 3, 64, 64) and out.image_index.numel() == 0


def test_memory_modules_frozen_everything_else_trainable():
    model = _tiny(64, classes=3)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("sam.memory_attention.") for n in frozen)
    assert "sam.maskmem_tpos_enc" in frozen and "sam.no_mem_embed" not in frozen
    assert all(n.startswith(("sam.memory_", "sam.maskmem", "sam.no_mem_pos", "sam.no_obj", "sam.obj_ptr",
                             "sam.mask_downsample")) for n in frozen)


def test_semantic_head_shape_and_learns_one_batch():
    torch.manual_seed(0)
    model = _tiny(64, classes=3).train()
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:48, 8:40] = 1
    target[1, 40:, 40:] = 2
    pixels = model.preprocess(images)
    logits = model(pixels)
    assert logits.shape == (2, 3, 64, 64)
    assert model.forward_semantic(model.encode(pixels), out_size=(50, 70)).shape == (2, 3, 50, 70)
    # The best constant prediction (the class frequencies) scores the entropy of the class marginals;
    # learning the layout must beat it, not just match the prior.
    freq = torch.bincount(target.flatten(), minlength=3).float() / target.numel()
    prior_loss = float(-(freq * freq.log()).sum())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(pixels), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * prior_loss < losses[0], (prior_loss, losses)


def test_semantic_without_head_says_how_to_get_one():
    model = _tiny(64)
    with pytest.raises(RuntimeError, match="num_classes"):
        model(model.preprocess(np.zeros((1, 64, 64, 3), np.uint8)))


def test_automatic_mask_generator_any_size():
    model = _tiny(96).eval()
    image = np.random.default_rng(7).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    gen = model.automatic_mask_generator(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    masks = gen.generate(image)
    assert masks and all(m["segmentation"].shape == (70, 90) for m in masks)


def test_video_predictor_from_arrays_tracks_both_ways():
    predictor = build_video_predictor(ModelConfig(arch="tiny", image_size=64))
    frames = np.random.default_rng(8).integers(0, 256, (4, 40, 50), dtype=np.uint8)
    state = init_video_state(predictor, frames)
    assert state["num_frames"] == 4 and (state["video_height"], state["video_width"]) == (40, 50)
    predictor.add_new_points_or_box(state, frame_idx=1, obj_id=1, points=np.array([[20.0, 20.0]]),
                                    labels=np.array([1]))
    seen = {}
    for idx, _, masks in predictor.propagate_in_video(state):
        seen[idx] = masks.shape
    # Backwards from the last frame: its memory is then only the annotated frame's bfloat16 features,
    # which crashed CPU memory attention ("mat1 and mat2 must have the same dtype") before the fix.
    for idx, _, masks in predictor.propagate_in_video(state, start_frame_idx=3, reverse=True):
        seen[idx] = masks.shape
    assert sorted(seen) == [0, 1, 2, 3] and all(s == (1, 1, 40, 50) for s in seen.values())
