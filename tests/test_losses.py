"""AVOS losses against values computed by hand (spec avos §4.3)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import AVOSCriterion, dice_loss, sigmoid_focal_loss

LN3 = math.log(3.0)
# Two pixels: logit 0 on a positive (p = 0.5), logit ln 3 on a negative (p = 0.75).
#   focal, positive: ln2 · (1 − 0.5)² · 0.25             = 0.0433217
#   focal, negative: ln4 · (1 − 0.25)² · 0.75            = 0.5848428
#   focal = mean                                           = 0.3140823
#   dice  = 1 − (2·0.5 + 1) / ((0.5 + 0.75) + 1 + 1)       = 1 − 2/3.25 = 0.3846154
FOCAL = (math.log(2) * 0.25 * 0.25 + math.log(4) * 0.5625 * 0.75) / 2
DICE = 1 - 2 / 3.25
# All-zero aux logits (p = 0.5 on both pixels):
#   focal = (ln2·0.25·0.25 + ln2·0.25·0.75) / 2 = 0.0866434;  dice = 1 − 2/3 = 0.3333333
FOCAL_AUX = (math.log(2) * 0.25 * 0.25 + math.log(2) * 0.25 * 0.75) / 2
DICE_AUX = 1 - 2 / 3


def _clip():
    logits = torch.tensor([[0.0, LN3]])  # [B=1, N=2]
    target = torch.tensor([[1.0, 0.0]])
    return logits, target


def test_focal_hand_value():
    logits, target = _clip()
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(FOCAL, rel=1e-6)
    assert FOCAL == pytest.approx(0.3140823, abs=1e-6)


def test_dice_hand_value():
    logits, target = _clip()
    assert dice_loss(logits, target).item() == pytest.approx(DICE, rel=1e-6)


def test_losses_sum_over_clips_and_mean_over_pixels():
    logits, target = _clip()
    # two identical clips: summed over the batch, not averaged
    assert sigmoid_focal_loss(logits.repeat(2, 1), target.repeat(2, 1)).item() == pytest.approx(2 * FOCAL, rel=1e-6)
    assert dice_loss(logits.repeat(2, 1), target.repeat(2, 1)).item() == pytest.approx(2 * DICE, rel=1e-6)
    # the same pixels twice in one clip: the focal mean is unchanged
    assert sigmoid_focal_loss(logits.repeat(1, 2), target.repeat(1, 2)).item() == pytest.approx(FOCAL, rel=1e-6)


def test_criterion_total_with_aux_weight():
    logits, target = _clip()
    outputs = {"pred_masks": logits.view(1, 1, 1, 2), "aux_pred_masks": torch.zeros(1, 1, 1, 2)}
    masks = target.view(1, 1, 1, 2).bool()  # bool masks are accepted
    out = AVOSCriterion(aux_weight=0.5)(outputs, masks)
    assert out["loss_focal"].item() == pytest.approx(FOCAL, rel=1e-6)
    assert out["loss_dice"].item() == pytest.approx(DICE, rel=1e-6)
    assert out["loss_focal_aux"].item() == pytest.approx(FOCAL_AUX, rel=1e-6)
    assert out["loss_dice_aux"].item() == pytest.approx(DICE_AUX, rel=1e-6)
    expected = FOCAL + DICE + 0.5 * (FOCAL_AUX + DICE_AUX)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.9086862, abs=1e-6)

    no_aux = AVOSCriterion(aux_weight=0.0)(outputs, masks)
    assert "loss_focal_aux" not in no_aux
    assert no_aux["loss"].item() == pytest.approx(FOCAL + DICE, rel=1e-6)

    normed = AVOSCriterion(aux_weight=0.5, aux_norm=True)(outputs, masks)
    assert normed["loss"].item() == pytest.approx((FOCAL + DICE + 0.5 * (FOCAL_AUX + DICE_AUX)) / 1.5, rel=1e-6)


def test_predictions_resized_bilinearly_to_target():
    torch.manual_seed(0)
    pred = torch.randn(1, 2, 3, 4)
    masks = (torch.rand(1, 2, 12, 16) > 0.5).float()
    out = AVOSCriterion(aux_weight=0)({"pred_masks": pred}, masks)
    up = F.interpolate(pred, size=(12, 16), mode="bilinear", align_corners=False)
    assert out["loss_focal"].item() == pytest.approx(sigmoid_focal_loss(up, masks).item(), rel=1e-6)
    assert out["loss_dice"].item() == pytest.approx(dice_loss(up, masks).item(), rel=1e-6)


def test_gradient_flows_to_both_outputs():
    pred = torch.zeros(1, 2, 4, 4, requires_grad=True)
    aux = torch.zeros(1, 2, 4, 4, requires_grad=True)
    masks = torch.zeros(1, 2, 4, 4)
    masks[..., :2, :2] = 1
    AVOSCriterion()({"pred_masks": pred, "aux_pred_masks": aux}, masks)["loss"].backward()
    assert pred.grad.abs().sum() > 0 and aux.grad.abs().sum() > 0
    # aux weight 0.5: the aux gradient is half the main one for identical logits
    assert torch.allclose(aux.grad, 0.5 * pred.grad)
