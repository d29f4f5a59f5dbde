import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from sam_histo.losses import mask_iou, prompted_loss, semantic_loss, sigmoid_focal, soft_dice

W = {"mask": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}


def test_focal_matches_torchvision_oracle():
    logits = torch.randn(3, 2, 8, 8)
    tgt = (torch.rand(3, 2, 8, 8) > 0.6).float()
    ours = sigmoid_focal(logits, tgt, alpha=0.25, gamma=2.0)
    ref = tv_focal(logits, tgt, alpha=0.25, gamma=2.0, reduction="none").flatten(2).mean(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_focal_without_alpha_gamma_is_bce():
    logits = torch.randn(2, 1, 5, 5)
    tgt = (torch.rand(2, 1, 5, 5) > 0.5).float()
    ref = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none").flatten(2).mean(-1)
    torch.testing.assert_close(sigmoid_focal(logits, tgt, alpha=-1, gamma=0), ref)


def test_dice_and_iou_on_perfect_and_disjoint_masks():
    tgt = torch.zeros(1, 2, 6, 6)
    tgt[..., :3, :] = 1
    perfect = (tgt * 2 - 1) * 50
    assert soft_dice(perfect, tgt)[0, 0] < 1e-3
    assert mask_iou(perfect, tgt)[0, 0] == 1.0
    assert mask_iou(-perfect, tgt)[0, 0] == 0.0


def _objects(n=2, m=3, s=16):
    targets = torch.zeros(n, s, s, dtype=torch.bool)
    for i in range(n):
        targets[i, 2 + i : 8 + i, 3:10] = True
    logits = torch.randn(n, m, s, s)
    return logits, targets


def test_prompted_picks_best_candidate_and_only_it_gets_mask_gradient():
    logits, targets = _objects()
    logits[:, 1] = (targets.float() * 2 - 1) * 20  # candidate 1 is perfect
    logits.requires_grad_(True)
    out = prompted_loss(logits, torch.zeros(2, 3), torch.ones(2, 1), targets, {"mask": 20.0, "dice": 1.0})
    assert out["dice"] < 1e-2
    out["total"].backward()
    g = logits.grad.abs().flatten(2).sum(-1)
    assert torch.all(g[:, 0] == 0) and torch.all(g[:, 2] == 0)


def test_class_weights_normalise_by_their_sum():
    logits, targets = _objects()
    args = (logits, torch.rand(2, 3), torch.randn(2, 1), targets, W)
    each = [prompted_loss(logits[i : i + 1], args[1][i : i + 1], args[2][i : i + 1], targets[i : i + 1], W) for i in range(2)]
    weighted = prompted_loss(*args, class_weight=torch.tensor([1.0, 3.0]))
    for key in ("mask", "dice", "iou", "class", "total"):
        expected = (each[0][key] + 3 * each[1][key]) / 4
        torch.testing.assert_close(weighted[key], expected)


def test_empty_target_gets_only_object_score_loss():
    logits = torch.randn(1, 3, 8, 8)
    out = prompted_loss(logits, torch.rand(1, 3), torch.tensor([[2.0]]), torch.zeros(1, 8, 8, dtype=torch.bool), W)
    assert out["mask"] == 0 and out["dice"] == 0 and out["iou"] == 0
    torch.testing.assert_close(out["class"], F.softplus(torch.tensor(2.0)))


def test_ignored_pixels_do_not_change_prompted_loss():
    logits, targets = _objects()
    valid = torch.ones_like(targets)
    valid[:, :, 12:] = False
    a = prompted_loss(logits, torch.rand(2, 3), torch.randn(2, 1), targets, W, valid=valid)
    logits2 = logits.clone()
    logits2[:, :, :, 12:] = torch.randn_like(logits2[:, :, :, 12:]) * 10
    b = prompted_loss(logits2, torch.rand(2, 3), torch.randn(2, 1), targets, W, valid=valid)
    for key in ("mask", "dice"):
        torch.testing.assert_close(a[key], b[key])


def test_unknown_loss_weight_key_is_named():
    logits, targets = _objects()
    with pytest.raises(KeyError, match="unknown loss weight.*'focal'"):
        prompted_loss(logits, torch.rand(2, 3), torch.randn(2, 1), targets, {"focal": 1.0})


def test_semantic_ce_matches_torch_with_weights_and_ignore():
    logits = torch.randn(2, 4, 9, 9)
    target = torch.randint(0, 4, (2, 9, 9))
    w = torch.tensor([0.0, 1.0, 2.5, 0.7])
    ours = semantic_loss(logits, target, w, ignore_index=0, kind="ce", dice_weight=0)["total"]
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=0)
    torch.testing.assert_close(ours, ref)


def test_semantic_focal_gamma0_is_ce_and_dice_ignores_ignore_pixels():
    logits = torch.randn(2, 3, 7, 7)
    target = torch.randint(0, 3, (2, 7, 7))
    ce = semantic_loss(logits, target, kind="ce", dice_weight=0)["total"]
    focal = semantic_loss(logits, target, kind="focal", focal_gamma=0.0, dice_weight=0)["total"]
    torch.testing.assert_close(ce, focal)
    target[:, :3] = 0
    a = semantic_loss(logits, target, ignore_index=0)["total"]
    logits2 = logits.clone()
    logits2[:, :, :3] = torch.randn(2, 3, 3, 7) * 5
    b = semantic_loss(logits2, target, ignore_index=0)["total"]
    torch.testing.assert_close(a, b)


def test_semantic_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'dicey' is not 'ce' or 'focal'"):
        semantic_loss(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), kind="dicey")
