"""Stage (ii) map fusion: per-class VLM probability maps -> one multi-class label map ``y_text``.

Input ``scores`` of shape ``(B, C, *S)`` are probabilities (``sigmoid`` of the VLM similarity logits), one map
per foreground class; channel ``c`` is label id ``c + 1``, background has no channel. ``*S`` is ``(H, W)`` or
``(D, H, W)``.

1. :func:`binarize_maps` -- per (image, class) threshold (paper: Otsu) -> ``(B, C, *S)`` bool.
2. :func:`fuse_binary_maps` -- where several classes fire, the class with the highest *normalised* score wins;
   where none fires, background 0; channel ``c`` -> label ``c + 1``.
3. :func:`fuse_maps` = 1 + 2; :func:`labels_to_probabilities` one-hot encodes the result. How y_text is combined
   with the teacher's prediction is the pseudo-label rule (`nnunet_cps4.method.pseudo_labels`).

Everything runs batched in torch on the tensors' device and without autograd (the outputs are discrete).
Bad arguments raise ``ValueError``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

__all__ = [
    "otsu_threshold",
    "binarize_maps",
    "fuse_binary_maps",
    "fuse_maps",
    "labels_to_probabilities",
    "BINARIZE_METHODS",
    "NORMALISATION_EPS",
]

BINARIZE_METHODS = ("otsu", "fixed")
NORMALISATION_EPS = 1e-6


def _check_scores(scores: torch.Tensor, check_range: bool = True) -> None:
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim not in (4, 5):
        raise ValueError(
            f"scores must have shape (B, C, H, W) or (B, C, D, H, W) (C = number of foreground classes), "
            f"got {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point probabilities, got dtype {scores.dtype}")
    if scores.numel() == 0:
        raise ValueError(f"scores is empty: {tuple(scores.shape)}")
    if check_range:
        lo, hi = float(scores.min()), float(scores.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"scores must be probabilities in [0, 1], got values in [{lo}, {hi}]; pass torch.sigmoid(similarity "
                f"logits), not the logits"
            )


@torch.no_grad()
def otsu_threshold(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Batched Otsu threshold: one threshold per row of ``x`` ``(N, P)`` -> ``(N,)``.

    Written in torch because ``skimage.filters.threshold_otsu`` thresholds one numpy array at a time on the CPU,
    while stage (ii) needs a threshold per (image, class) for a whole batch on the training device. It follows
    skimage's algorithm: a ``bins``-bin histogram over each row's own [min, max] range, the between-class
    variance ``w1 * w2 * (mu1 - mu2)^2`` for every split between bins, first maximum wins. One deliberate
    difference: skimage returns the *centre* of the last bin of the lower class, so ``x > t`` also fires on the
    upper half of that bin; this returns the *largest value of the lower class*, so ``x > t`` is exactly Otsu's
    upper class. Both lie in the same bin: the two agree to within one bin width (tested). Foreground is
    ``x > threshold``. A constant row returns that constant (nothing strictly above it fires). Histogram
    statistics are accumulated in float64; the result has ``x``'s dtype (float32 for non-float input).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a 2D (N, P) tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[1] == 0:
        raise ValueError("x must have at least one value per row (P >= 1)")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x
    n = xf.shape[0]
    if n == 0:
        return torch.empty(0, dtype=out_dtype, device=x.device)
    lo = xf.amin(dim=1, keepdim=True)
    hi = xf.amax(dim=1, keepdim=True)
    rng = hi - lo
    constant = rng[:, 0] <= 0
    safe_rng = torch.where(rng > 0, rng, torch.ones_like(rng))
    idx = ((xf - lo) / safe_rng * bins).long().clamp_(0, bins - 1)  # max value goes into the last bin (numpy)
    counts = torch.zeros(n, bins, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    lo64, rng64 = lo.double(), rng.double()  # bin centres as skimage (histogram statistics only)
    centers = lo64 + (torch.arange(bins, device=x.device, dtype=torch.float64) + 0.5) * (rng64 / bins)  # (N, bins)

    weight1 = counts.cumsum(1)
    weight2 = counts.flip(1).cumsum(1).flip(1)
    csum = (counts * centers).cumsum(1)
    mean1 = csum / weight1.clamp_min(1)
    mean2 = (counts * centers).flip(1).cumsum(1).flip(1) / weight2.clamp_min(1)
    variance12 = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    best = variance12.argmax(dim=1, keepdim=True)  # first maximum, as numpy
    # The threshold is the largest value of the lower class (bins 0..best), not skimage's centre of bin `best`:
    # with the centre, values in the upper half of that bin would fire under `x > t` although Otsu put them in
    # the lower class (on a map with an empty gap between noise and structure, the top of the noise fired).
    # Both lie inside bin `best`, so the two agree to within one bin width.
    thr = torch.where(idx <= best, xf, torch.full_like(xf, -float("inf"))).amax(dim=1)
    thr = torch.where(constant, lo[:, 0], thr)  # bin 0 holds everything anyway; explicit for clarity
    return thr.to(out_dtype)


@torch.no_grad()
def binarize_maps(
    scores: torch.Tensor,
    method: str = "otsu",
    threshold: float = 0.5,
    min_peak: float = 0.5,
    bins: int = 256,
    return_thresholds: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Binarise per-class probability maps ``(B, C, *S)`` -> bool ``(B, C, *S)``.

    * ``method="otsu"`` (paper): a threshold ``thr_{b,c}`` per image and class from :func:`otsu_threshold`
      over that map's pixels; a pixel fires if ``score > thr_{b,c}``. In addition a class whose maximum
      probability in the image is below ``min_peak`` fires nowhere in that image: Otsu always splits a map in
      two, so a map with no structure (class not in the image, e.g. a thoracic level on a lumbar slice) would
      otherwise fire on noise. Default 0.5 = logit 0, i.e. the VLM must call the class more likely than not
      somewhere; ``min_peak=0`` switches the guard off.
    * ``method="fixed"``: a pixel fires if ``score > threshold`` (``min_peak`` is not used; the threshold
      already is the minimum).

    With ``return_thresholds=True`` also returns the ``(B, C)`` thresholds used (for ``fixed``: ``threshold``
    everywhere), which :func:`fuse_binary_maps` uses for its normalisation.
    """
    _check_scores(scores)
    if method not in BINARIZE_METHODS:
        raise ValueError(f"method must be one of {BINARIZE_METHODS}, got {method!r}")
    b, c = scores.shape[:2]
    flat = scores.reshape(b * c, -1)
    if method == "otsu":
        if not 0.0 <= float(min_peak) <= 1.0:
            raise ValueError(f"min_peak must be a probability in [0, 1], got {min_peak!r}")
        thr = otsu_threshold(flat, bins=bins).view(b, c)
        peak = flat.amax(dim=1).view(b, c)
        allowed = peak >= min_peak
    else:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        thr = torch.full((b, c), float(threshold), dtype=scores.dtype, device=scores.device)
        allowed = torch.ones(b, c, dtype=torch.bool, device=scores.device)
    view = (b, c) + (1,) * (scores.ndim - 2)
    binary = (scores > thr.view(view)) & allowed.view(view)
    if return_thresholds:
        return binary, thr
    return binary


@torch.no_grad()
def fuse_binary_maps(
    scores: torch.Tensor,
    binary: torch.Tensor,
    thresholds: Optional[torch.Tensor] = None,
    eps: float = NORMALISATION_EPS,
) -> torch.Tensor:
    """Fuse per-class binary maps into one label map ``(B, *S)`` (int64, values ``0..C``).

    Where exactly one class fires, it is the label (channel ``c`` -> ``c + 1``); where none fires, background 0;
    where several fire, the class with the highest normalised score

        ``n_{b,c}(p) = (s_{b,c}(p) - thr_{b,c}) / (max_p s_{b,c} - thr_{b,c} + eps)``

    wins: 0 at the class's own decision threshold, 1 at its peak in the image. This puts classes whose maps
    are calibrated differently (one prompt generally scoring higher than another) on one scale, and the
    scale is tied to each class's own binarisation decision: in the overlap of two neighbouring vertebrae the
    pixel goes to the class for which it lies deeper inside its own firing region. (A min-max normalisation
    over the image would instead favour the class with the higher threshold, since its boundary pixels are
    already high on its min-max scale.) Ties go to the lower class index.

    ``thresholds`` ``(B, C)`` are the thresholds behind ``binary`` (``binarize_maps(...,
    return_thresholds=True)``; :func:`fuse_maps` passes them). Without them the lowest firing score of each
    (image, class) stands in for the threshold (normalised score 0 at that pixel) -- an approximation from
    above of the true threshold, for binary maps that came from elsewhere.
    """
    _check_scores(scores, check_range=False)
    if not isinstance(binary, torch.Tensor) or binary.shape != scores.shape:
        raise ValueError(
            f"binary must have the shape of scores {tuple(scores.shape)}, got {tuple(getattr(binary, 'shape', ()))}"
        )
    binary = binary.to(device=scores.device, dtype=torch.bool)
    b, c = scores.shape[:2]
    s = scores.float().reshape(b, c, -1)
    fire = binary.reshape(b, c, -1)
    peak = s.amax(dim=2)  # (B, C)
    if thresholds is None:
        thr = torch.where(fire, s, torch.full_like(s, float("inf"))).amin(dim=2)
        thr = torch.where(torch.isfinite(thr), thr, peak)  # classes that fire nowhere: value unused
    else:
        if not isinstance(thresholds, torch.Tensor) or thresholds.shape != (b, c):
            raise ValueError(f"thresholds must be a ({b}, {c}) tensor, got {tuple(getattr(thresholds, 'shape', ()))}")
        thr = thresholds.to(device=s.device, dtype=torch.float32)
    norm = (s - thr.unsqueeze(2)) / (peak - thr + eps).unsqueeze(2)
    norm = torch.where(fire, norm, torch.full_like(norm, -float("inf")))
    best = norm.argmax(dim=1)  # (B, P)
    labels = torch.where(fire.any(dim=1), best + 1, torch.zeros_like(best))
    return labels.view((b,) + tuple(scores.shape[2:]))


@torch.no_grad()
def fuse_maps(
    scores: torch.Tensor,
    method: str = "otsu",
    threshold: float = 0.5,
    min_peak: float = 0.5,
    bins: int = 256,
) -> torch.Tensor:
    """``y_text``: :func:`binarize_maps` then :func:`fuse_binary_maps` -> int64 ``(B, *S)`` with values ``0..C``.

    ``scores`` ``(B, C, *S)`` are per-class probabilities (sigmoid of the VLM logits). Defaults: Otsu per image
    and class, ``min_peak=0.5``; ``threshold`` is used by ``method="fixed"`` only.
    """
    binary, thr = binarize_maps(
        scores, method=method, threshold=threshold, min_peak=min_peak, bins=bins, return_thresholds=True
    )
    return fuse_binary_maps(scores, binary, thresholds=thr)


def labels_to_probabilities(
    fused: torch.Tensor, num_classes_incl_bg: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot ``(B, K, *S)`` (``K = num_classes_incl_bg = C + 1``) of a label map ``(B, *S)``.

    The "text probabilities" of stage (ii): the pseudo label is ``argmax(softmax(teacher) + this)``.
    """
    if not isinstance(fused, torch.Tensor) or fused.ndim not in (3, 4):
        raise ValueError(
            f"fused must be a (B, H, W) or (B, D, H, W) label map, got {getattr(fused, 'shape', type(fused))}"
        )
    if fused.is_floating_point() or fused.dtype == torch.bool:
        raise ValueError(f"fused must be an integer label map, got dtype {fused.dtype}")
    if not isinstance(num_classes_incl_bg, int) or num_classes_incl_bg < 2:
        raise ValueError(f"num_classes_incl_bg must be an int >= 2 (background + classes), got {num_classes_incl_bg!r}")
    if fused.numel() > 0:
        lo, hi = int(fused.min()), int(fused.max())
        if lo < 0 or hi >= num_classes_incl_bg:
            raise ValueError(
                f"fused holds labels in [{lo}, {hi}] but num_classes_incl_bg={num_classes_incl_bg} allows 0.."
                f"{num_classes_incl_bg - 1}"
            )
    onehot = torch.nn.functional.one_hot(fused.long(), num_classes_incl_bg)  # (B, *S, K)
    return onehot.movedim(-1, 1).to(dtype)
