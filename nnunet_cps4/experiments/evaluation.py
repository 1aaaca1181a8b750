"""Test-set evaluation: per-case and per-class Dice, IoU (nnU-Net's own metric code) and HD95 (medpy).

Conventions (also written into every results file):
- Dice/IoU of a class absent from both reference and prediction is NaN and left out of means (nnU-Net's rule);
  absent from one of them: 0.
- HD95 (mm, using the image spacing) is NaN when the class is empty in the reference or the prediction.
- Foreground volume ratio: voxels with any foreground label in the prediction / in the reference, per case; its
  median over cases shows under- (< 1) or over-segmentation (> 1) that a mean Dice hides.
- Every level placed (datasets whose prompts declare a spine order): per case, whether every vertebra and disc of
  the reference is predicted and nearest to its own reference centroid (`spine_order.levels_correctly_placed`);
  the fraction of cases is reported.
- Per-class scores are means over cases (NaN-aware); the case-level "mean" is over the foreground classes that
  are defined for that case, and a method's mean Dice is the mean over classes of the per-class means.
"""
import os
from typing import Callable, Dict, List, Optional

import numpy as np
from medpy.metric.binary import hd95
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_cps4.method.metrics import dice_from_counts
from nnunet_cps4.method.spine_order import LevelOrder, levels_correctly_placed

METRIC_NOTES = ("Dice/IoU: class absent in reference and prediction -> NaN (excluded from means); "
                "HD95 in mm via medpy.metric.binary.hd95, NaN if the class is empty in either image")


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """95th-percentile Hausdorff distance of two binary masks in mm; NaN if either is empty."""
    if not pred.any() or not ref.any():
        return float("nan")
    return float(hd95(pred, ref, voxelspacing=spacing))


def _read_case(pred_folder: str, ref_folder: str, case: str, file_ending: str, reader_writer):
    """(prediction, reference, reference spacing) of one case; label maps as read, shape (1, *S)."""
    ref, ref_props = reader_writer.read_seg(os.path.join(ref_folder, case + file_ending))
    pred, _ = reader_writer.read_seg(os.path.join(pred_folder, case + file_ending))
    return pred, ref, ref_props["spacing"]


def evaluate_case(pred, ref, spacing, labels: Dict[str, int]) -> Dict[str, dict]:
    """{class name: {"Dice", "IoU", "HD95"}} for one case (label maps as read, (1, *S))."""
    result = {}
    for name, label in labels.items():
        r, p = ref[0] == label, pred[0] == label
        tp, fp, fn, _ = compute_tp_fp_fn_tn(r, p)
        denominator = tp + fp + fn
        result[name] = {"Dice": dice_from_counts(tp, fp, fn),
                        "IoU": float(tp / denominator) if denominator else float("nan"),
                        "HD95": hd95_mm(p, r, spacing)}
    return result


def volume_ratio(pred, ref) -> float:
    """Predicted / reference foreground voxels (any label > 0); NaN for an empty reference."""
    n_ref = (ref > 0).sum()
    return float((pred > 0).sum() / n_ref) if n_ref else float("nan")


def ratio_summary(ratios: Dict[str, float]) -> dict:
    """{"cases": ratios, "median": over the cases with a defined ratio (NaN if none)}."""
    values = np.array(list(ratios.values()), dtype=float)
    return {"cases": ratios, "median": float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")}


def placed_summary(placed: Dict[str, bool]) -> dict:
    """{"cases": {case: every level placed}, "fraction": of the cases}."""
    return {"cases": placed, "fraction": float(np.mean(list(placed.values()))) if placed else float("nan")}


def evaluate_folder(pred_folder: str, ref_folder: str, labels: Dict[str, int], file_ending: str = ".nii.gz",
                    order: Optional[LevelOrder] = None) -> dict:
    """Every reference case must have a prediction; returns per-case and aggregated metrics (each file read once),
    with "every_level_placed" when a spine `order` is given."""
    cases = sorted(f[:-len(file_ending)] for f in os.listdir(ref_folder) if f.endswith(file_ending))
    missing = [c for c in cases if not os.path.isfile(os.path.join(pred_folder, c + file_ending))]
    if missing:
        raise FileNotFoundError(f"{pred_folder} lacks predictions for {missing}")
    rw = SimpleITKIO()
    per_case, ratios, placed = {}, {}, {}
    for c in cases:
        pred, ref, spacing = _read_case(pred_folder, ref_folder, c, file_ending, rw)
        per_case[c] = evaluate_case(pred, ref, spacing, labels)
        ratios[c] = volume_ratio(pred, ref)
        if order is not None:
            placed[c] = levels_correctly_placed(pred[0], ref[0], order, spacing)
    result = {"cases": per_case, **aggregate(per_case, list(labels)), "foreground_volume_ratio": ratio_summary(ratios)}
    if order is not None:
        result["every_level_placed"] = placed_summary(placed)
    return result


def _per_case_from_files(pred_folder: str, ref_folder: str, cases: List[str], file_ending: str,
                         measure: Callable) -> dict:
    """{case: measure(prediction, reference, spacing)} read from the files (for results evaluated before a measure
    existed; evaluate_folder computes them from the arrays it already read)."""
    rw = SimpleITKIO()
    return {c: measure(*_read_case(pred_folder, ref_folder, c, file_ending, rw)) for c in cases}


def foreground_volume_ratio(pred_folder: str, ref_folder: str, cases: List[str], file_ending: str = ".nii.gz"
                            ) -> dict:
    """{"cases": {case: predicted / reference foreground voxels}, "median": over cases}, from the files."""
    return ratio_summary(_per_case_from_files(pred_folder, ref_folder, cases, file_ending,
                                              lambda pred, ref, spacing: volume_ratio(pred, ref)))


def every_level_placed(pred_folder: str, ref_folder: str, cases: List[str], order: LevelOrder,
                       file_ending: str = ".nii.gz") -> dict:
    """`placed_summary` from the files."""
    return placed_summary(_per_case_from_files(
        pred_folder, ref_folder, cases, file_ending,
        lambda pred, ref, spacing: levels_correctly_placed(pred[0], ref[0], order, spacing)))


def aggregate(per_case: Dict[str, Dict[str, dict]], class_names: List[str]) -> dict:
    per_class = {}
    for name in class_names:
        per_class[name] = {}
        for metric in ("Dice", "IoU", "HD95"):
            values = np.array([per_case[c][name][metric] for c in per_case], dtype=float)
            per_class[name][metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    mean = {}
    for metric in ("Dice", "IoU", "HD95"):
        values = np.array([per_class[n][metric] for n in class_names], dtype=float)
        mean[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return {"per_class": per_class, "mean": mean, "notes": METRIC_NOTES}
