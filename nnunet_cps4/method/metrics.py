"""Dice, the one overlap score of the package (test evaluation, pseudo-label analysis, VLM validation, training
statistics), on numpy arrays or torch tensors alike.

Convention (nnU-Net's): a class absent from both prediction and reference has no Dice (NaN), and is left out
of means; absent from one of them: 0.
"""
import numpy as np


def dice_from_counts(tp, fp, fn):
    """2 tp / (2 tp + fp + fn) for scalars or arrays of counts; NaN where the denominator is 0."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)
    return float(result) if result.ndim == 0 else result


def dice(pred, ref) -> float:
    """Dice of two boolean masks of the same shape (numpy arrays or torch tensors)."""
    tp = (pred & ref).sum()
    fp = (pred & ~ref).sum()
    fn = (~pred & ref).sum()
    return dice_from_counts(*(float(x) for x in (tp, fp, fn)))
