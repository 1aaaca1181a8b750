"""Stage (i) attention losses: hand-computed values, absent classes, 2D/3D, upsampling, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_cps4.method.attention_losses import (
    AttentionLoss,
    class_masks_from_labels,
    pixel_attention_loss,
    present_classes,
    token_attention_loss,
    upsample_to,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _square_mask(shape, device="cpu"):
    """(1, 1, *shape) float mask with the first half of the first axis positive."""
    m = torch.zeros((1, 1) + tuple(shape), device=device)
    m[:, :, : shape[0] // 2] = 1.0
    return m


# ------------------------------------------------------------------------------------------------ masks helpers
def test_class_masks_from_labels_2d_with_channel_and_ignore():
    seg = torch.tensor([[[[0, 1], [2, -1]]]])  # (1, 1, 2, 2)
    m = class_masks_from_labels(seg, 3)
    assert m.shape == (1, 3, 2, 2) and m.dtype == torch.float32
    assert m[0, 0].tolist() == [[0, 1], [0, 0]]
    assert m[0, 1].tolist() == [[0, 0], [1, 0]]
    assert m[0, 2].sum() == 0  # label 3 absent; -1 negative everywhere
    assert present_classes(m).tolist() == [[True, True, False]]


def test_class_masks_from_labels_no_channel_3d_float_and_errors():
    seg = torch.zeros(2, 1, 3, 4)  # 3D (B, D, H, W) with D == 1: ambiguous, pass has_channel_dim
    seg[1, 0, 1, 1] = 2.0
    m = class_masks_from_labels(seg, 2, has_channel_dim=False)
    assert m.shape == (2, 2, 1, 3, 4)
    assert present_classes(m).tolist() == [[False, False], [False, True]]
    assert class_masks_from_labels(seg, 2).shape == (2, 2, 3, 4)  # default guess: channel dim -> 2D
    with pytest.raises(ValueError, match="outside 0..2"):
        class_masks_from_labels(torch.tensor([[[0, 3]]]), 2)
    assert class_masks_from_labels(torch.tensor([[[0, 255]]]), 2, ignore_values=(-1, 255)).sum() == 0
    with pytest.raises(ValueError):
        class_masks_from_labels(torch.zeros(2, 3), 2)


# -------------------------------------------------------------------------------------------------- token loss
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 4)])
def test_token_loss_all_mass_inside_and_outside(device, shape):
    m = _square_mask(shape, device)
    n_in = m.sum().item()
    n_out = m.numel() - n_in
    inside = torch.where(m > 0, 50.0, -50.0)
    for form in ("linear", "log"):
        assert token_attention_loss(inside, m, form=form).item() == pytest.approx(0.0, abs=1e-6)
    outside = -inside
    assert token_attention_loss(outside, m, form="linear").item() == pytest.approx(1.0, abs=1e-6)
    # -log f = log(1 + n_out/n_in * e^100)
    expected = 100.0 + math.log(n_out / n_in)
    assert token_attention_loss(outside, m, form="log").item() == pytest.approx(expected, rel=1e-5)


def test_token_loss_uniform_attention_hand_computed_linear_vs_log():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, :2] = 1  # 2 of 16 pixels
    s = torch.zeros(1, 1, 4, 4)
    assert token_attention_loss(s, m, form="linear").item() == pytest.approx(1 - 2 / 16, abs=1e-6)
    assert token_attention_loss(s, m, form="log").item() == pytest.approx(-math.log(2 / 16), abs=1e-6)
    # default is the log form
    assert token_attention_loss(s, m).item() == pytest.approx(-math.log(2 / 16), abs=1e-6)
    with pytest.raises(ValueError, match="form"):
        token_attention_loss(s, m, form="square")


def test_token_loss_absent_class_excluded_and_batch_mean_over_present_pairs():
    # image 0: class 0 covers 4/16, class 1 absent; image 1: class 0 covers 2/16, class 1 covers 8/16
    m = torch.zeros(2, 2, 4, 4)
    m[0, 0, 0] = 1
    m[1, 0, 1, :2] = 1
    m[1, 1, 2:] = 1
    s = torch.zeros(2, 2, 4, 4)
    s[0, 1] = torch.randn(4, 4) * 10  # logits of the absent pair must not matter
    expected = ((1 - 4 / 16) + (1 - 2 / 16) + (1 - 8 / 16)) / 3
    assert token_attention_loss(s, m, form="linear").item() == pytest.approx(expected, abs=1e-6)
    per = token_attention_loss(s, m, form="log", reduction="none")
    assert per.shape == (2, 2) and per[0, 1].item() == 0.0
    assert per[1, 1].item() == pytest.approx(math.log(2), abs=1e-6)


def test_token_loss_no_class_present_is_zero_with_grad():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    for form in ("linear", "log"):
        loss = token_attention_loss(s, torch.zeros(2, 3, 4, 4), form=form)
        assert loss.item() == 0.0 and loss.requires_grad
        (g,) = torch.autograd.grad(loss, s)
        assert torch.all(g == 0)


# -------------------------------------------------------------------------------------------------- pixel loss
def test_pixel_loss_hand_computed_2x2():
    s = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    m = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    # BCE(sigmoid(x), y) = log(1 + e^x) - x*y
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(1 + math.exp(3))) / 4
    assert pixel_attention_loss(s, m).item() == pytest.approx(expected, abs=1e-6)
    # pos_weight multiplies the positive terms only
    expected_pw = (
        math.log(2) + 3 * math.log(1 + math.exp(-2)) + 3 * math.log(1 + math.e) + math.log(1 + math.exp(3))
    ) / 4
    assert pixel_attention_loss(s, m, pos_weight=3.0).item() == pytest.approx(expected_pw, abs=1e-6)


def test_pixel_loss_absent_class_counts_as_all_negative():
    s = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    m = torch.zeros(1, 2, 2, 2)
    m[0, 0, 0, 1] = m[0, 0, 1, 0] = 1  # class 1 absent
    c0 = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(1 + math.exp(3))) / 4
    c1 = math.log(1 + math.e)  # all four pixels: logit 1, target 0
    assert pixel_attention_loss(s, m).item() == pytest.approx((c0 + c1) / 2, abs=1e-6)


# -------------------------------------------------------------------------------------------------- upsampling
@pytest.mark.parametrize("spatial,mode", [((2, 2), "bilinear"), ((2, 2, 2), "trilinear")])
def test_upsampling_matches_manual_interpolate(spatial, mode):
    torch.manual_seed(0)
    full = tuple(2 * d for d in spatial)
    s_low = torch.randn((2, 3) + spatial)
    seg = torch.randint(0, 4, (2, 1) + full)
    m = class_masks_from_labels(seg, 3)
    s_up = F.interpolate(s_low, size=full, mode=mode, align_corners=False)
    assert torch.equal(upsample_to(s_low, full), s_up)
    assert upsample_to(s_up, full) is s_up  # same size: no-op
    for form in ("linear", "log"):
        assert torch.allclose(token_attention_loss(s_low, m, form=form), token_attention_loss(s_up, m, form=form))
    assert torch.allclose(pixel_attention_loss(s_low, m), pixel_attention_loss(s_up, m))
    with pytest.raises(ValueError, match="larger"):
        pixel_attention_loss(torch.randn((2, 3) + tuple(4 * d for d in spatial)), m)


# ------------------------------------------------------------------------------------------------------ grads
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (2, 3, 2, 6, 6)])
def test_gradients_finite_with_extreme_logits(device, shape):
    torch.manual_seed(0)
    s = (torch.randn(shape, device=device).sign() * 1e4).requires_grad_(True)
    seg = torch.randint(0, 3, (shape[0], 1) + shape[2:], device=device)  # class 3 absent everywhere
    for form in ("linear", "log"):
        loss, parts = AttentionLoss(token_form=form)(s, seg)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
        assert g.abs().sum() > 0
        assert set(parts) == {"token", "pixel"}


def test_fp16_logits_are_computed_in_float32():
    s = torch.full((1, 1, 4, 4), 60000.0, dtype=torch.float16)  # e^60000 overflows any float
    s[0, 0, 0, 0] = -60000.0
    m = _square_mask((4, 4))
    assert torch.isfinite(token_attention_loss(s, m, form="log"))
    assert torch.isfinite(pixel_attention_loss(s, m))


# ------------------------------------------------------------------------------------------------ module
def test_attention_loss_module_combines_and_reads_label_maps_and_masks():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    seg = torch.randint(-1, 4, (2, 1, 8, 8))
    m = class_masks_from_labels(seg, 3)
    crit = AttentionLoss()
    assert crit.token_weight == 1.0 and crit.pixel_weight == 1.0 and crit.token_form == "log"
    total, parts = crit(s, seg)
    tok, pix = token_attention_loss(s, m), pixel_attention_loss(s, m)
    assert torch.allclose(parts["token"], tok) and torch.allclose(parts["pixel"], pix)
    assert torch.allclose(total, tok + pix)
    # the same from (B, *S) labels, float masks and bool masks
    for target in (seg[:, 0], m, m.bool()):
        assert torch.allclose(crit(s, target)[0], total)
    crit.token_weight, crit.pixel_weight = 0.5, 0.0
    total2, parts2 = crit(s, seg)
    assert torch.allclose(total2, 0.5 * tok) and parts2["pixel"].item() == 0.0
    total2.backward()
    assert s.grad is not None


def test_attention_loss_module_3d_label_map_with_depth_one():
    s = torch.zeros(1, 2, 1, 4, 4)
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)  # (B, D=1, H, W) without channel
    seg[0, 0, :2] = 2
    total, parts = AttentionLoss(pixel_weight=0.0, token_form="linear")(s, seg)
    assert parts["token"].item() == pytest.approx(1 - 8 / 16, abs=1e-6)
    with pytest.raises(ValueError):
        AttentionLoss()(s, torch.zeros(4, 4))
