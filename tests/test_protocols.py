"""Prompt protocols: each protocol's prompts are what it names, TTA maps image and prompts consistently
(a model equivariant by construction gives the same answer with and without it), and the table CLI."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from sam_histo.config import PromptConfig
from sam_histo.data.protocols import N_NEG, N_POINTS, interior_centroid, object_prompts, protocol_prompts
from sam_histo.data.types import ClassSpec
from sam_histo.infer.tta import TTA_VIEWS, view_logits

CLASSES = ClassSpec(names=("background", "ring", "block"))


def two_objects(h=40, w=48):
    """A C-shaped ring (class 1, its plain centroid falls in the hole) and a block (class 2)."""
    mask = np.zeros((h, w), np.int64)
    mask[4:24, 4:24] = 1
    mask[9:19, 9:24] = 0  # open to the right: a C
    mask[26:36, 30:44] = 2
    return mask


def test_each_protocol_prompts_what_it_names():
    mask = two_objects()
    cfg = PromptConfig(max_objects=16, min_area=4)
    a = object_prompts(mask, CLASSES, cfg, np.random.default_rng([7, 3]))
    b = object_prompts(mask, CLASSES, cfg, np.random.default_rng([7, 3]))
    assert list(a.class_ids) == [1, 2] and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in vars(a))
    for k, obj in enumerate(a.targets):
        ys, xs = np.nonzero(obj)
        plain = (xs.mean(), ys.mean())
        cx, cy = a.centroid[k].astype(int)
        dist = distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        assert obj[cy, cx] and dist[cy, cx] == dist.max()  # inside, at the distance maximum
        if k == 0:
            assert not obj[int(round(plain[1])), int(round(plain[0]))]  # the naive centroid is in the hole
        centroid, _ = protocol_prompts(a, "centroid")
        assert centroid.points.shape[1] == 1 and np.array_equal(centroid.points[k, 0], a.centroid[k])
        assert (centroid.point_labels == 1).all() and not centroid.has_box.any()
        five, _ = protocol_prompts(a, "points5")
        assert five.points.shape[1] == N_POINTS and (five.point_labels == 1).all()
        assert all(obj[int(y), int(x)] for x, y in five.points[k]) and np.array_equal(five.points[k, 0], a.centroid[k])
        box, with_points = protocol_prompts(a, "box")
        assert box.has_box.all() and not with_points and (box.point_labels == -1).all()
        assert list(box.boxes[k]) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        neg, with_points = protocol_prompts(a, "box+neg")
        assert with_points and np.array_equal(neg.boxes, box.boxes) and neg.points.shape[1] == N_NEG
        assert (neg.point_labels[k] == 0).all()
        room = (~obj[ys.min():ys.max() + 1, xs.min():xs.max() + 1]).any()
        assert room == (k == 0)  # the C has room for negatives inside its box, the full block has none
        for x, y in neg.points[k]:
            assert not obj[int(y), int(x)]  # outside the component ...
            inside = xs.min() <= x <= xs.max() and ys.min() <= y <= ys.max()
            assert inside == room  # ... and inside its box where there is room
    with pytest.raises(ValueError, match="unknown prompt protocol"):
        protocol_prompts(a, "scribble")


def test_interior_centroid_of_a_full_image_object_is_its_middle():
    obj = np.ones((9, 9), bool)
    point, _ = interior_centroid(obj)
    assert list(point) == [4, 4]


class FakeSam(torch.nn.Module):
    """Logits = image brightness - distance (in the model's S x S frame, as SAM2 places prompts) from each
    pixel to the object's anchor (box centre, or first point) + distance to its negative points. Flips
    and rotations of the S x S frame are isometries, so the model is equivariant by construction; with
    ``absolute`` it adds the column index, which does not move with the image."""

    image_size = 32

    def __init__(self, absolute: bool = False):
        super().__init__()
        self.absolute = absolute
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def preprocess(self, images):
        return torch.as_tensor(np.ascontiguousarray(images)).float()

    def encode(self, pixels):
        return pixels

    def forward_prompted(self, feats, prompts, multimask=True, orig_hw=None, use_points_with_box=False):
        p, (h, w), s = prompts[0], orig_hw, self.image_size
        img = feats[0].mean(-1) / 255.0
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
        cx, cy = (xs + 0.5) * s / w, (ys + 0.5) * s / h

        def frame(x, y):
            return x * s / w + 0.5, y * s / h + 0.5

        out = []
        for k in range(len(p)):
            if p.has_box[k]:
                x0, y0, x1, y1 = (float(v) for v in p.boxes[k])
                ax, ay = frame((x0 + x1) / 2, (y0 + y1) / 2)
            else:
                ax, ay = frame(*(float(v) for v in p.points[k, 0]))
            base = img - torch.hypot(cx - ax, cy - ay) / s
            if use_points_with_box:
                for (x, y), lab in zip(p.points[k], p.point_labels[k]):
                    if lab == 0:
                        nx, ny = frame(float(x), float(y))
                        base = base + 0.5 * torch.hypot(cx - nx, cy - ny) / s
            if self.absolute:
                base = base + xs / w
            out.append(torch.stack([base - 0.3, base, base + 0.2]))
        logits = torch.stack(out).float() if out else torch.zeros(0, 3, h, w)
        iou = torch.tensor([[0.2, 0.9, 0.5]]).repeat(len(out), 1)
        return SimpleNamespace(logits=logits, iou_pred=iou)


def test_tta_of_an_equivariant_model_equals_no_tta_and_of_another_does_not():
    mask = two_objects(40, 48)  # not square: rot90 swaps the sides
    rng = np.random.default_rng(0)
    image = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    op = object_prompts(mask, CLASSES, PromptConfig(max_objects=16, min_area=4), np.random.default_rng(1))
    sets = {p: protocol_prompts(op, p) for p in ("centroid", "points5", "box", "box+neg")}
    plain = view_logits(FakeSam(), image, sets, views=("identity",))
    tta = view_logits(FakeSam(), image, sets, views=TTA_VIEWS)
    assert TTA_VIEWS == ("identity", "hflip", "vflip", "rot90")
    for p in sets:
        assert plain[p].shape == (2, 40, 48)
        assert torch.allclose(tta[p], plain[p], atol=1e-5), p
    moved = view_logits(FakeSam(absolute=True), image, sets, views=TTA_VIEWS)
    assert not torch.allclose(moved["box"], view_logits(FakeSam(absolute=True), image, sets, ("identity",))["box"])


def test_validate_protocols_cli_writes_one_table_for_the_base_model(bcss_root, tmp_path, capsys):
    import json

    from sam_histo.cli import main

    args = ["validate", "--config", "configs/demo.yaml", "--checkpoint", "base", "--out", str(tmp_path / "t"),
            "--protocols", "centroid,points5,box,box+neg,box+neg+tta", f"data.root={bcss_root}",
            "model.image_size=64", "eval.max_objects=4", "data.val_fraction=0.34"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = json.loads((tmp_path / "t" / "protocols.json").read_text())
    assert list(table["protocols"]) == ["centroid", "points5", "box", "box+neg", "box+neg+tta"]
    assert "zero-shot" in table["checkpoint"] and "| box+neg+tta |" in out
    md = (tmp_path / "t" / "protocols.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| protocol |"))
    assert header.endswith("| macro Dice | macro IoU |") and "tumor" in header
    for row in table["protocols"].values():
        assert row["macro_dice"] is not None and 0 <= row["macro_dice"] <= 1
    assert main([*args[:-4], "--protocols", "box,boxx"]) == 2
    err = capsys.readouterr().err
    assert "'boxx' is not a prompt protocol" in err and len(err.strip().splitlines()) == 1
