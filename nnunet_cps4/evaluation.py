"""Test-set evaluation: per-case and per-class Dice, IoU (nnU-Net's own metric code) and HD95 (medpy).

Conventions (also written into every results file):
- Dice/IoU of a class absent from both reference and prediction is NaN and left out of means (nnU-Net's rule);
  absent from one of them: 0.
- HD95 (mm, using the image spacing) is NaN when the class is empty in the reference or the prediction.
- Foreground volume ratio: voxels with any foreground label in the prediction / in the reference, per case; its
  median over cases shows under- (< 1) or over-segmentation (> 1) that a mean Dice hides.
- Per-class scores are means over cases (NaN-aware); the case-level "mean" is over the foreground classes that
  are defined for that case, and a method's mean Dice is the mean over classes of the per-class means.
"""
import os
from typing import Dict, List

import numpy as np

METRIC_NOTES = ("Dice/IoU: class absent in reference and prediction -> NaN (excluded from means); "
                "HD95 in mm via medpy.metric.binary.hd95, NaN if the class is empty in either image")


def _hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    from medpy.metric.binary import hd95

    if not pred.any() or not ref.any():
        return float("nan")
    return float(hd95(pred, ref, voxelspacing=spacing))


def evaluate_case(pred_file: str, ref_file: str, labels: Dict[str, int], reader_writer) -> Dict[str, dict]:
    """{class name: {"Dice", "IoU", "HD95"}} for one case."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    ref, ref_props = reader_writer.read_seg(ref_file)
    pred, _ = reader_writer.read_seg(pred_file)
    spacing = ref_props["spacing"]
    result = {}
    for name, label in labels.items():
        r, p = ref[0] == label, pred[0] == label
        tp, fp, fn, _ = compute_tp_fp_fn_tn(r, p)
        denominator = tp + fp + fn
        result[name] = {"Dice": float(2 * tp / (2 * tp + fp + fn)) if denominator else float("nan"),
                        "IoU": float(tp / denominator) if denominator else float("nan"),
                        "HD95": _hd95(p, r, spacing)}
    return result


def evaluate_folder(pred_folder: str, ref_folder: str, labels: Dict[str, int], file_ending: str = ".nii.gz"
                    ) -> dict:
    """Every reference case must have a prediction; returns per-case and aggregated metrics."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    cases = sorted(f[:-len(file_ending)] for f in os.listdir(ref_folder) if f.endswith(file_ending))
    missing = [c for c in cases if not os.path.isfile(os.path.join(pred_folder, c + file_ending))]
    if missing:
        raise FileNotFoundError(f"{pred_folder} lacks predictions for {missing}")
    rw = SimpleITKIO()
    per_case = {c: evaluate_case(os.path.join(pred_folder, c + file_ending), os.path.join(ref_folder, c + file_ending),
                                 labels, rw) for c in cases}
    return {"cases": per_case, **aggregate(per_case, list(labels)),
            "foreground_volume_ratio": foreground_volume_ratio(pred_folder, ref_folder, cases, file_ending)}


def foreground_volume_ratio(pred_folder: str, ref_folder: str, cases: List[str], file_ending: str = ".nii.gz"
                            ) -> dict:
    """{"cases": {case: predicted / reference foreground voxels}, "median": over cases}."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rw = SimpleITKIO()
    ratios = {}
    for c in cases:
        ref = rw.read_seg(os.path.join(ref_folder, c + file_ending))[0] > 0
        pred = rw.read_seg(os.path.join(pred_folder, c + file_ending))[0] > 0
        ratios[c] = float(pred.sum() / ref.sum()) if ref.any() else float("nan")
    values = np.array(list(ratios.values()), dtype=float)
    return {"cases": ratios, "median": float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")}


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
