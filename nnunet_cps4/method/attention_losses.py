"""Stage (i) attention losses: tie each class's VLM similarity map to that class's binary mask.

The VLM produces one similarity map per foreground class, ``sim`` of shape ``(B, C, *S)`` with
``sim[:, c] = <v_p, t_c> / tau`` (logits). Class channel ``c`` is label id ``c + 1`` of the dataset; background
has no channel. ``*S`` is ``(H, W)`` for 2D and ``(D, H, W)`` for 3D.

Two losses (reconstructed from the paper's description; docs/METHOD.md):

* :func:`token_attention_loss` -- "concentrates the cross-modal attention map onto the target spine unit's
  binary mask region by maximizing the fraction of total attention mass falling within the foreground".
* :func:`pixel_attention_loss` -- "pixel-wise binary cross-entropy between the upsampled attention map and the
  binary mask, preventing over-concentration on subregions".

"Up": when the similarity maps are coarser than the masks (a ViT gives one token per patch), both losses
upsample the logits to the mask size with ``F.interpolate`` (bilinear in 2D, trilinear in 3D,
``align_corners=False``) before anything else. Equal sizes are a no-op; maps *larger* than the masks are
rejected (that is almost always swapped arguments).

All computation is done in float32 (also under autocast), so fp16 logits do not overflow in the softmax.
Bad arguments raise ``ValueError`` (these are programming errors, not user settings, hence not ``CPS4Error``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "class_masks_from_labels",
    "present_classes",
    "upsample_to",
    "token_attention_loss",
    "pixel_attention_loss",
    "AttentionLoss",
    "TOKEN_LOSS_FORMS",
]

TOKEN_LOSS_FORMS = ("linear", "log")


# ----------------------------------------------------------------------------------------------------- helpers
def _check_sim(sim: torch.Tensor, name: str = "sim") -> None:
    if not isinstance(sim, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(sim).__name__}")
    if sim.ndim not in (4, 5):
        raise ValueError(
            f"{name} must have shape (B, C, H, W) or (B, C, D, H, W) (C = number of foreground classes), "
            f"got {tuple(sim.shape)}"
        )
    if not sim.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor of logits, got dtype {sim.dtype}")


def class_masks_from_labels(
    seg: torch.Tensor,
    num_classes: int,
    ignore_values: Sequence[int] = (-1,),
    has_channel_dim: Optional[bool] = None,
) -> torch.Tensor:
    """Per-class binary masks ``M`` of shape ``(B, num_classes, *S)`` (float32) from a label map.

    ``M[:, c] = (seg == c + 1)``: label id ``c + 1`` goes to channel ``c``. Background (0) and every value in
    ``ignore_values`` (nnU-Net pads segmentations with -1; its ignore label, if any, can be added here) are
    negative in every channel. Any other value outside ``0..num_classes`` raises ``ValueError`` -- a label the
    class list does not know is a configuration error, not background.

    ``seg`` is ``(B, 1, *S)`` (nnU-Net's layout) or ``(B, *S)``; integer or float dtype holding integer values.
    ``has_channel_dim=None`` guesses: a size-1 dim 1 in a 4D/5D tensor is the channel. The guess is ambiguous
    only for a 3D ``(B, D, H, W)`` map with ``D == 1``; pass ``has_channel_dim`` explicitly there
    (:class:`AttentionLoss` does, from the similarity map's ndim).
    """
    if not isinstance(seg, torch.Tensor):
        raise ValueError(f"seg must be a torch.Tensor, got {type(seg).__name__}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (foreground classes), got {num_classes!r}")
    if has_channel_dim is None:
        has_channel_dim = seg.ndim in (4, 5) and seg.shape[1] == 1
    if has_channel_dim:
        if seg.ndim not in (4, 5) or seg.shape[1] != 1:
            raise ValueError(f"seg with a channel dim must be (B, 1, H, W) or (B, 1, D, H, W), got {tuple(seg.shape)}")
        seg = seg[:, 0]
    if seg.ndim not in (3, 4):
        raise ValueError(
            f"seg must be (B, [1,] H, W) or (B, [1,] D, H, W), got {tuple(seg.shape)} "
            f"(has_channel_dim={has_channel_dim})"
        )
    if seg.is_floating_point():
        seg = torch.round(seg)
    seg = seg.long()
    ignore = torch.zeros_like(seg, dtype=torch.bool)
    for v in ignore_values:
        ignore |= seg == int(v)
    if seg.numel() > 0:
        bad = (~ignore) & ((seg < 0) | (seg > num_classes))
        if bool(bad.any()):
            values = torch.unique(seg[bad]).tolist()[:10]
            raise ValueError(
                f"seg holds label values {values} outside 0..{num_classes} (num_classes={num_classes} foreground "
                f"classes) that are not in ignore_values={tuple(ignore_values)}; fix num_classes or add them to "
                f"ignore_values"
            )
    ids = torch.arange(1, num_classes + 1, device=seg.device).view(1, num_classes, *([1] * (seg.ndim - 1)))
    # ignored pixels have values <= 0 or > num_classes or were validated above; mask them explicitly anyway
    masks = (seg.unsqueeze(1) == ids) & ~ignore.unsqueeze(1)
    return masks.float()


def present_classes(masks: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` bool: class ``c`` has at least one positive (``> 0``) pixel in image ``b``."""
    if not isinstance(masks, torch.Tensor) or masks.ndim < 3:
        raise ValueError(f"masks must be a (B, C, *S) tensor, got {getattr(masks, 'shape', type(masks))}")
    return (masks.flatten(2) > 0).any(dim=-1)


def upsample_to(sim: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The paper's "Up": interpolate logits ``(B, C, *S)`` to spatial ``size`` (bilinear 2D / trilinear 3D,
    ``align_corners=False``). No-op when the size already matches; a map larger than ``size`` in any dim is a
    ``ValueError``."""
    _check_sim(sim)
    size = tuple(int(s) for s in size)
    if len(size) != sim.ndim - 2:
        raise ValueError(f"size {size} does not match the {sim.ndim - 2}D similarity map {tuple(sim.shape)}")
    if tuple(sim.shape[2:]) == size:
        return sim
    if any(a > b for a, b in zip(sim.shape[2:], size)):
        raise ValueError(
            f"similarity map {tuple(sim.shape[2:])} is larger than the mask {size} in some dim; the losses only "
            f"upsample coarse maps to the mask size (swapped arguments?)"
        )
    mode = "bilinear" if sim.ndim == 4 else "trilinear"
    return F.interpolate(sim, size=size, mode=mode, align_corners=False)


def _prepare(sim: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_sim(sim)
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.ndim != sim.ndim or masks.shape[:2] != sim.shape[:2]:
        raise ValueError(
            f"masks must be (B, C, *S) with the same B and C as sim {tuple(sim.shape[:2])}, got {tuple(masks.shape)} "
            f"(build them with class_masks_from_labels)"
        )
    sim = upsample_to(sim.float(), masks.shape[2:])
    return sim, masks.to(device=sim.device, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------------ losses
def token_attention_loss(
    sim: torch.Tensor,
    masks: torch.Tensor,
    form: str = "log",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Token-level attention loss (fraction of attention mass inside the class mask).

    Per image ``b`` and class ``c``: ``a_{c,p} = softmax_p(Up(s)_{c,p})`` over all pixels ``p`` and
    ``f_{b,c} = sum_p a_{c,p} M_c(p)``, the fraction of attention mass inside the mask. Then

    * ``form="linear"``: ``l_{b,c} = 1 - f_{b,c}``  (the paper's literal "maximise the fraction"; in [0, 1]);
    * ``form="log"`` (default): ``l_{b,c} = -log f_{b,c} = logsumexp_p s - logsumexp_{p in M} s``.

    ``L_token = sum_{b,c present} l_{b,c} / #present``: the mean over the (image, class) pairs whose class has at
    least one mask pixel in that image. Absent pairs are excluded (their mask is empty, so "attention inside
    the mask" is undefined and ``-log 0`` infinite; the pixel loss handles absent classes). If no class is
    present in the whole batch the loss is ``0 * sim.sum()``-style zero that keeps the graph (backward works
    and gives zero gradients).

    Why ``log`` is the default: both forms have the same optimum (f = 1), but the linear form's gradient
    w.r.t. a logit is ``-a_p (M_p - f)``, which vanishes when the attention is far off (f ~ 0) -- exactly the
    situation at the start of training for small structures such as one vertebra (f ~ |M|/N ~ 1 %). The log
    form's gradient is ``a_p - a_p^{in}`` (``a^{in}`` = softmax restricted to the mask), of order one whatever
    f is. It is computed as a difference of two logsumexps, which is exact and stable for any logits, and its
    gradient is bounded in [-1, 1] per pixel, so no clamp is applied (a clamp such as ``-log(max(f, eps))``
    would zero the gradient precisely in the far-off regime). The loss *value* is unbounded (about the logit
    gap when all mass is outside); the linear form, bounded in [0, 1], is one argument away.

    Soft masks (values in [0, 1]) are allowed: ``f = sum_p a_p M_p`` and the log form uses
    ``logsumexp_p (s_p + log M_p)``.

    Args:
        sim: logits ``(B, C, *S')`` with ``S'`` equal to or coarser than the masks' ``S``.
        masks: ``(B, C, *S)`` in [0, 1] (see :func:`class_masks_from_labels`).
        form: ``"log"`` or ``"linear"``.
        reduction: ``"mean"`` (scalar, as above) or ``"none"`` (``(B, C)`` per-pair losses, 0 for absent pairs).
    """
    if form not in TOKEN_LOSS_FORMS:
        raise ValueError(f"form must be one of {TOKEN_LOSS_FORMS}, got {form!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    sim, masks = _prepare(sim, masks)
    s = sim.flatten(2)  # (B, C, P)
    m = masks.flatten(2)
    present = (m > 0).any(dim=-1)  # (B, C)
    # log of the mask; -inf outside. Absent pairs get the full logits so both logsumexps are finite there
    # (l = 0): a -inf row would give NaN gradients even when multiplied by zero afterwards.
    s_in = torch.where(m > 0, s + torch.log(m.clamp_min(1e-30)), torch.full_like(s, -math.inf))
    s_in = torch.where(present.unsqueeze(-1), s_in, s)
    log_frac = torch.logsumexp(s_in, dim=-1) - torch.logsumexp(s, dim=-1)  # (B, C), <= 0
    log_frac = log_frac.clamp_max(0.0)  # rounding only; f <= 1 in exact arithmetic for masks in [0, 1]
    if form == "log":
        per_pair = -log_frac
    else:
        per_pair = 1.0 - torch.exp(log_frac)
    per_pair = per_pair * present.float()
    if reduction == "none":
        return per_pair
    return per_pair.sum() / present.sum().clamp_min(1).float()


def pixel_attention_loss(
    sim: torch.Tensor,
    masks: torch.Tensor,
    pos_weight: Optional[Union[float, torch.Tensor]] = None,
) -> torch.Tensor:
    r"""Pixel-level attention loss: ``L_pixel = mean_{b,c,p} BCE(sigmoid(Up(s)_{b,c,p}), M_{b,c}(p))``.

    Every class channel of every image counts, absent classes included (their mask is all zeros, so the map is
    pushed to be negative everywhere -- this is what stops a class prompt from lighting up on a neighbouring
    vertebra). Since all maps have the same number of pixels, the global mean equals the mean over (image,
    class) of the per-map mean BCE. Computed with ``binary_cross_entropy_with_logits`` on the logits, which is
    numerically stable for any logit magnitude.

    ``pos_weight`` (default ``None`` = plain mean BCE, as in the paper): optional weight of the positive term,
    a float or a ``(C,)`` tensor (one per class), passed to ``binary_cross_entropy_with_logits``; e.g.
    ``#neg/#pos`` counters the foreground/background imbalance of small structures. It is a documented knob for
    ablations, off by default.
    """
    sim, masks = _prepare(sim, masks)
    pw = None
    if pos_weight is not None:
        pw = torch.as_tensor(pos_weight, dtype=torch.float32, device=sim.device)
        if pw.ndim == 0:
            pw = pw.reshape(1)
        if pw.ndim != 1 or pw.numel() not in (1, sim.shape[1]):
            raise ValueError(f"pos_weight must be a float or a ({sim.shape[1]},) tensor, got shape {tuple(pw.shape)}")
        pw = pw.view(1, -1, *([1] * (sim.ndim - 2)))
    return F.binary_cross_entropy_with_logits(sim, masks, pos_weight=pw, reduction="mean")


class AttentionLoss(nn.Module):
    """Stage (i) loss: ``token_weight * L_token + pixel_weight * L_pixel``.

    Settings are plain attributes so trainer variants can flip them: ``token_weight`` and ``pixel_weight``
    (default 1.0 each; 0 switches a term off -- it is then not computed and logged as 0), ``token_form``
    (``"log"`` default, see :func:`token_attention_loss`), ``pos_weight`` (``None``), ``ignore_values``
    (``(-1,)``, label values counted as negative everywhere).

    ``forward(sim, target)`` returns ``(total, {"token": L_token, "pixel": L_pixel})`` (detached copies in the
    dict, for logging). ``target`` is either

    * a label map ``(B, 1, *S)`` or ``(B, *S)`` (nnU-Net layout), turned into masks with
      :func:`class_masks_from_labels` and ``num_classes = sim.shape[1]``; or
    * per-class masks ``(B, C, *S)``: any ``bool`` tensor, or any tensor of ``sim``'s ndim whose dim 1 equals
      ``C`` when ``C > 1``. With ``C == 1`` a ``(B, 1, *S)`` non-bool tensor is read as a label map (for 0/1
      values both readings agree); pass soft single-class masks to the functional losses instead.
    """

    def __init__(
        self,
        token_weight: float = 1.0,
        pixel_weight: float = 1.0,
        token_form: str = "log",
        pos_weight: Optional[Union[float, torch.Tensor]] = None,
        ignore_values: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        if token_form not in TOKEN_LOSS_FORMS:
            raise ValueError(f"token_form must be one of {TOKEN_LOSS_FORMS}, got {token_form!r}")
        self.token_weight = float(token_weight)
        self.pixel_weight = float(pixel_weight)
        self.token_form = token_form
        self.pos_weight = pos_weight
        self.ignore_values = tuple(ignore_values)

    def extra_repr(self) -> str:
        return (
            f"token_weight={self.token_weight}, pixel_weight={self.pixel_weight}, token_form={self.token_form!r}, "
            f"pos_weight={self.pos_weight}, ignore_values={self.ignore_values}"
        )

    def masks_for(self, sim: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ``(B, C, *S)`` float masks for ``target`` (label map or masks, see the class docstring)."""
        _check_sim(sim)
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
        num_classes = sim.shape[1]
        is_masks = target.dtype == torch.bool or (
            target.ndim == sim.ndim and target.shape[1] == num_classes and num_classes > 1
        )
        if is_masks:
            return target.float()
        if target.ndim == sim.ndim:
            has_channel = True
        elif target.ndim == sim.ndim - 1:
            has_channel = False
        else:
            raise ValueError(
                f"target {tuple(target.shape)} is neither a label map (B, [1,] *S) nor (B, C={num_classes}, *S) masks "
                f"for sim {tuple(sim.shape)}"
            )
        return class_masks_from_labels(target, num_classes, self.ignore_values, has_channel_dim=has_channel)

    def forward(self, sim: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        masks = self.masks_for(sim, target)
        zero = sim.float().sum() * 0.0  # keeps the graph when a term is switched off
        token = token_attention_loss(sim, masks, form=self.token_form) if self.token_weight != 0 else zero
        pixel = pixel_attention_loss(sim, masks, pos_weight=self.pos_weight) if self.pixel_weight != 0 else zero
        total = self.token_weight * token + self.pixel_weight * pixel
        return total, {"token": token.detach(), "pixel": pixel.detach()}
