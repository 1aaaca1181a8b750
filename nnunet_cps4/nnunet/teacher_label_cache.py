"""The teacher's pseudo labels of whole, un-augmented unlabeled cases, carried through the student's augmentation.

Why: in the per-batch mean teacher, teacher and student see the same augmented patch, so the student is pulled
toward the (lagging) teacher's reading of a distorted image — noise, blur, gamma and contrast changes included.
Offline pseudo-labelling, which beat the mean teacher in the paper's regime (docs/BENCHMARKS.md), labels each
case once from the clean image and lets nnU-Net's augmentation move the label with the image; the student must
then reproduce the clean view's label from the distorted one (the weak-to-strong idea of FixMatch). This module
does that inside the trainer: between epochs the EMA teacher predicts every unlabeled case whole with nnU-Net's
own sliding-window predictor (Gaussian-weighted tiles, no test-time mirroring), the trainer's pseudo-label rule
(confidence cut, CPS4's VLM vote, spine order) turns the probabilities into labels, and the labels are stored in
the format `vlm_map_cache` uses (nnU-Net's "segmentation from the previous stage"), so nnU-Net's loader crops,
rotates, scales and mirrors them with the image.

Stored codes: 0 = unsupervised (also what the loader's padding becomes), label k -> k + 1, unsupervised -> 0.
"""
import json
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

CODE_DTYPE = np.int16
MANIFEST = "manifest.json"


def encode_labels(labels: torch.Tensor, ignore_value: int) -> np.ndarray:
    """labels (*S) with values 0..C-1 and `ignore_value` -> int16 codes (*S) (0 = unsupervised)."""
    labels = labels.long()
    return torch.where(labels == ignore_value, torch.zeros_like(labels), labels + 1).cpu().numpy() \
        .astype(CODE_DTYPE)


def decode_labels(codes: torch.Tensor, ignore_value: int) -> torch.Tensor:
    """codes (B, 1, *S) from the loader -> labels (B, 1, *S) long, `ignore_value` where unsupervised (code <= 0,
    which includes the -1/0 padding of nnU-Net's loader and augmentation)."""
    codes = codes.long()
    return torch.where(codes > 0, codes - 1, torch.full_like(codes, ignore_value))


def as_batch(case_array: torch.Tensor, two_d: bool) -> torch.Tensor:
    """(channels, *S) of one case -> the trainer's batch layout: its slices as a batch of 2D images for a 2d
    configuration (channels, Z, Y, X) -> (Z, channels, Y, X), else a batch of one."""
    return case_array.permute(1, 0, 2, 3) if two_d else case_array[None]


def from_batch(batch_array: torch.Tensor, two_d: bool) -> torch.Tensor:
    """The inverse of `as_batch` for a one-channel batch: (Z, 1, Y, X) or (1, 1, *S) -> (*S)."""
    return batch_array[:, 0] if two_d else batch_array[0, 0]


LabelCase = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], Tuple[torch.Tensor, float, Dict[str, float]]]


def write_teacher_labels(dataset, predictor, label_case: LabelCase, out_folder: str, ignore_value: int, two_d: bool,
                         epoch: int, log=print) -> dict:
    """Label every case of `dataset` (an nnU-Net dataset of preprocessed unlabeled cases, opened with the per-case
    maps the rule reads as its previous-stage folder, if any) into `out_folder`.

    predictor: an nnU-Net predictor holding the teacher; label_case(data, logits, maps) gets one case in the batch
    layout (`as_batch`; maps None without a maps folder) and returns its pseudo labels (B, 1, *S) with
    `ignore_value` where unsupervised, the weight of their loss and the rule's statistics. The folder is replaced as
    a whole (written beside it, then renamed); its manifest (returned) holds the epoch, the cases, the weight and
    the statistics' means over the cases, so that every process of a distributed run reads the same."""
    cases: List[str] = sorted(dataset.identifiers)
    tmp = out_folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ignored, total, weights, per_case = 0, 0, set(), []
    for case in cases:
        data, _, maps, _ = dataset.load_case(case)
        data = torch.from_numpy(np.asarray(data[:])).float()
        maps = None if maps is None else as_batch(torch.from_numpy(np.asarray(maps[:]).astype(np.int64))[None], two_d)
        with torch.no_grad():
            logits = predictor.predict_sliding_window_return_logits(data).float().cpu()
        labels, weight, stats = label_case(as_batch(data, two_d), as_batch(logits, two_d), maps)
        labels = from_batch(labels.cpu(), two_d)
        ignored += int((labels == ignore_value).sum())
        total += labels.numel()
        weights.add(float(weight))
        if len(weights) > 1:
            raise ValueError(f"pseudo labels of one labelling need one loss weight, got {sorted(weights)}")
        per_case.append(stats)
        dataset.save_seg(encode_labels(labels, ignore_value), os.path.join(tmp, case))
    manifest = {"epoch": epoch, "cases": cases, "unsupervised_fraction": ignored / max(1, total),
                "weight": weights.pop() if weights else 0.0,
                "stats": {k: float(np.mean([s[k] for s in per_case])) for k in (per_case[0] if per_case else {})}}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(out_folder, ignore_errors=True)  # ours: the trainer's fold folder
    os.replace(tmp, out_folder)
    log(f"teacher labels of {len(cases)} whole unlabeled case(s) written to {out_folder} (epoch {epoch}; "
        f"{100 * manifest['unsupervised_fraction']:.1f} % of voxels unsupervised)")
    return manifest


def read_manifest(folder: str) -> dict:
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)

