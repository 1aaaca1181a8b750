"""Writing phantom cases and datasets: size parsing, `make_case`, NIfTI output, the raw dataset and its
overview picture.

`generate_phantom_dataset` writes `DatasetID_NAME/` in the layout of `nnunet_cps4.data.layout`: labeled cases in
imagesTr/labelsTr, unlabeled cases in imagesUnlabeled with their true labels in `labelsUnlabeledReference/`
(for analysis only), test cases in imagesTs/labelsTs, then dataset.json and cps4_split.json.
"""
import json
import math
import os
import re
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_cps4.data.layout import (MRSPINESEG_LABELS, UNLABELED_FOLDER, create_dataset_folder, make_split,
                                        require_env_folder, write_dataset_json, write_split)
from nnunet_cps4.data.phantom.anatomy import FOV_MM, _sample_subject, disc_label, spacing_for
from nnunet_cps4.data.phantom.field import (DEFAULT_FIELD, check_field, crop_to_field, field_fov_mm, field_labels,
                                            field_prompt_file, field_size)
from nnunet_cps4.data.phantom.render import render_subject
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import PROMPT_FILE_KEY

GENERATOR = "nnunet-cps4 phantom"
PHANTOM_VERSION = 1
REFERENCE_FOLDER = "labelsUnlabeledReference"
CHANNEL_NAMES = {0: "T2"}
FILE_ENDING = ".nii.gz"
DEFAULT_NAME = "SpinePhantom"
DEFAULT_N = 50
DEFAULT_LABELED_FRACTION = 0.05
DEFAULT_TEST = 10
DEFAULT_SEED = 0
#: voxels along (LR, SI, AP)
DEFAULT_SIZE: Tuple[int, int, int] = (7, 160, 64)
MIN_SIZE: Tuple[int, int, int] = (3, 64, 24)
MAX_SIZE: Tuple[int, int, int] = (64, 1024, 512)
MAX_VOXELS = 16 * 512 * 512


# ------------------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------------------
def parse_size(text) -> Tuple[int, int, int]:
    """'ZxYxX' (slices x rows x columns = LR x SI x AP) -> a checked (Z, Y, X) tuple, or a CPS4Error."""
    if isinstance(text, (tuple, list)):
        parts = tuple(int(v) for v in text)
        if len(parts) != 3:
            raise CPS4Error(f"--size needs 3 numbers (slices x rows x columns), got {text!r}. Fix: e.g. --size 7x160x64")
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*", str(text))
        if not m:
            raise CPS4Error(f"--size {text!r} is not of the form ZxYxX (LR slices x SI rows x AP columns). "
                            f"Fix: e.g. --size 7x160x64 (the default) or --size 5x128x48")
        parts = tuple(int(v) for v in m.groups())
    names = ("slices (LR)", "rows (SI)", "columns (AP)")
    for value, lo, hi, what in zip(parts, MIN_SIZE, MAX_SIZE, names):
        if value < lo:
            raise CPS4Error(f"--size {_fmt_size(parts)}: {value} {what} is too few for the spine anatomy "
                            f"(minimum {_fmt_size(MIN_SIZE)}). Fix: e.g. --size 5x128x48 or the default 7x160x64")
        if value > hi:
            raise CPS4Error(f"--size {_fmt_size(parts)}: {value} {what} is more than the phantom supports "
                            f"(maximum {_fmt_size(MAX_SIZE)}). Fix: choose a smaller --size")
    sz, sy, sx = spacing_for(parts)
    if sz <= max(sy, sx):
        raise CPS4Error(f"--size {_fmt_size(parts)}: {parts[0]} slices over the fixed {FOV_MM[0]:g} mm left-right field "
                        f"of view are {sz:.2f} mm thick, not thicker than the {max(sy, sx):.2f} mm in-plane pixels, so "
                        f"nnU-Net would not treat the slices as sagittal. Fix: use fewer slices or more rows/columns "
                        f"(e.g. --size 7x160x64)")
    if int(np.prod(parts)) > MAX_VOXELS:
        raise CPS4Error(f"--size {_fmt_size(parts)} has {int(np.prod(parts))} voxels, more than {MAX_VOXELS}. "
                        f"Fix: choose a smaller --size")
    return parts  # type: ignore[return-value]


def _fmt_size(size: Sequence[int]) -> str:
    """(7, 160, 64) -> '7x160x64'."""
    return "x".join(str(int(v)) for v in size)


def _check_seed(seed) -> None:
    if int(seed) < 0:
        raise CPS4Error(f"--seed {seed} is negative. Fix: use a seed of 0 or more")


# ------------------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------------------
def _visible_top(label: np.ndarray, labels: dict) -> Optional[str]:
    """Name of the highest vertebra (S, L5, ...) present in a label volume, or None; `labels` are the dataset.json
    labels, whose vertebrae (names without '/') are numbered from the sacrum up."""
    names = {v: k for k, v in labels.items() if v > 0 and "/" not in k}
    present = [int(v) for v in np.unique(label) if int(v) in names]
    return names[max(present)] if present else None


def make_case(seed: int, index: int, size: Sequence[int] = DEFAULT_SIZE,
              field: str = DEFAULT_FIELD) -> Tuple[np.ndarray, np.ndarray, dict]:
    """One phantom subject: (int16 image, uint8 label, info), arrays (LR, SI, AP), from rng([seed, index]).

    `size` is the whole-spine grid; a `field` other than "spine" crops it (`nnunet_cps4.data.phantom.field`)."""
    size = parse_size(size)
    check_field(field)
    _check_seed(seed)
    rng = np.random.default_rng([int(seed), int(index)])
    subject = _sample_subject(rng)
    image, label = render_subject(subject, size, rng)
    image, label = crop_to_field(field, image, label, subject, rng)
    info = {"top_level": _visible_top(label, field_labels(field)), "scale": round(subject["scale"], 3),
            "lordosis": round(subject["lordosis"], 3), "sacral_slope_deg": round(math.degrees(subject["sacrum"][0]["phi"]), 1),
            "degenerated_discs": [_disc_name(d["index"]) for d in subject["discs"]
                                  if not d["remnant"] and d["degenerated"] and _disc_name(d["index"])]}
    return image, label, info


def _disc_name(k: int) -> Optional[str]:
    """MRSpineSeg name of the disc below vertebra k, or None above T9/T10."""
    lab = disc_label(k)
    return next((n for n, v in MRSPINESEG_LABELS.items() if v == lab), None) if lab else None


def _direction() -> Tuple[float, ...]:
    # columns of the direction matrix (LPS): index x (AP column) -> posterior, y (row) -> inferior,
    # z (slice) -> patient right; a proper rotation (determinant +1)
    return (0.0, 0.0, -1.0,
            1.0, 0.0, 0.0,
            0.0, -1.0, 0.0)


def write_case(array: np.ndarray, spacing: Sequence[float], path: str) -> None:
    """Write an (LR, SI, AP) array as NIfTI with the phantom's spacing and sagittal orientation."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetDirection(_direction())
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, path, True)


# ------------------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------------------
def generate_phantom_dataset(dataset_id: int, n_cases: int = DEFAULT_N,
                             labeled_fraction: float = DEFAULT_LABELED_FRACTION, n_test: int = DEFAULT_TEST,
                             seed: int = DEFAULT_SEED, size=DEFAULT_SIZE, name: str = DEFAULT_NAME,
                             overwrite: bool = False, raw_root: Optional[str] = None, verbose: bool = False,
                             field: str = DEFAULT_FIELD) -> str:
    """Write a phantom dataset under `raw_root` (default $nnUNet_raw) and return its folder."""
    size = parse_size(size)
    check_field(field)
    n_cases, n_test = int(n_cases), int(n_test)
    if n_test < 0:
        raise CPS4Error(f"--test {n_test} is negative. Fix: use --test 0 or more")
    if n_cases < n_test + 1:
        raise CPS4Error(f"-n {n_cases} is too small for --test {n_test}: no training case would be left. "
                        f"Fix: use -n {n_test + 1} or more (better {n_test + 2}+ so there is an unlabeled case), "
                        f"or lower --test")
    if not 0 < labeled_fraction <= 1:
        raise CPS4Error(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}. Fix: e.g. 0.05 for 5 %")
    _check_seed(seed)
    raw_root = raw_root or require_env_folder("nnUNet_raw")
    width = max(3, len(str(n_cases - 1)))
    case_ids = [f"spine_{i:0{width}d}" for i in range(n_cases)]
    split = make_split(case_ids, labeled_fraction, n_test, seed)
    folder = create_dataset_folder(raw_root, dataset_id, name, overwrite=overwrite)
    os.makedirs(os.path.join(folder, REFERENCE_FOLDER), exist_ok=True)
    spacing = spacing_for(size)
    where = {c: "labeled" for c in split["labeled"]}
    where.update({c: "unlabeled" for c in split["unlabeled"]})
    where.update({c: "test" for c in split["test"]})
    folders = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": (UNLABELED_FOLDER, REFERENCE_FOLDER),
               "test": ("imagesTs", "labelsTs")}
    phantom = {"seed": int(seed), "size": list(field_size(field, size)), "spacing": [round(s, 6) for s in spacing],
               "field": field, "grid": list(size),
               "fov_mm": list(field_fov_mm(field)), "axes": ["LR", "SI", "AP"], "n_cases": n_cases,
               "labeled_fraction": float(labeled_fraction), "n_test": n_test, "version": PHANTOM_VERSION,
               "reference_label_folder": REFERENCE_FOLDER}
    # dataset.json first: it marks the folder as ours, so --overwrite can replace an interrupted run
    write_dataset_json(folder, field_labels(field), CHANNEL_NAMES, len(split["labeled"]), FILE_ENDING,
                       GENERATOR, os.path.basename(folder),
                       description=f"Synthetic sagittal T2 spine MR phantom (nnunet-cps4), field of view {field!r}, "
                                   f"MRSpineSeg labels" + (" (lumbar subset)" if field == "lumbar" else ""),
                       license="synthetic data without any patient information (nnunet-cps4 phantom)",
                       extra_cps4={"phantom": phantom, PROMPT_FILE_KEY: field_prompt_file(field)})
    infos = {}
    t0 = time.time()
    for i, case in enumerate(case_ids):
        image, label, info = make_case(seed, i, size, field)
        img_dir, lab_dir = folders[where[case]]
        write_case(image, spacing, os.path.join(folder, img_dir, f"{case}_0000{FILE_ENDING}"))
        write_case(label, spacing, os.path.join(folder, lab_dir, f"{case}{FILE_ENDING}"))
        infos[case] = info
        if verbose:
            print(f"{case} ({where[case]}): top level {info['top_level']}")
    write_split(folder, split, generator=GENERATOR, reference_label_folder=REFERENCE_FOLDER,
                cases={c: {"set": where[c], **infos[c]} for c in case_ids})
    if verbose:
        print(f"wrote {n_cases} cases to {folder} in {time.time() - t0:.1f} s "
              f"({len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, {len(split['test'])} test)")
    return folder


# ------------------------------------------------------------------------------------------------------------
# picture
# ------------------------------------------------------------------------------------------------------------
def _label_colors(labels: dict) -> np.ndarray:
    """RGBA per label id of dataset.json `labels`: strong colours for the bodies, light ones for the discs (names
    with '/'), no greys; background transparent."""
    import matplotlib  # only when drawing
    tab20 = matplotlib.colormaps["tab20"].colors
    strong = [0, 2, 4, 6, 8, 10, 12, 16, 18]
    light = [9, 11, 13, 17, 19, 1, 3, 5, 7]
    colors = np.zeros((max(labels.values()) + 1, 4))
    bodies = sorted(v for k, v in labels.items() if v > 0 and "/" not in k)
    discs = sorted(v for k, v in labels.items() if v > 0 and "/" in k)
    for i, v in enumerate(bodies):
        colors[v, :3] = tab20[strong[i % len(strong)]] if i < len(strong) else (1.0, 0.85, 0.1)
    for i, v in enumerate(discs):
        colors[v, :3] = tab20[light[i % len(light)]]
    colors[1:, 3] = 1.0
    return colors


def save_overview_png(raw_dataset_folder: str, out_png: str, n_cases: int = 4, lateral: bool = True) -> str:
    """Mid-sagittal image, label overlay (and a lateral slice) for the first `n_cases` cases that have labels.

    Looks in labelsTr, labelsUnlabeledReference and labelsTs. Returns `out_png`.
    """
    from nnunet_cps4.plots import plt  # matplotlib (non-interactive backend): only when drawing
    pairs = []
    for img_dir, lab_dir, set_name in (("imagesTr", "labelsTr", "labeled"),
                                       (UNLABELED_FOLDER, REFERENCE_FOLDER, "unlabeled"),
                                       ("imagesTs", "labelsTs", "test")):
        lab_path = os.path.join(raw_dataset_folder, lab_dir)
        if not os.path.isdir(lab_path):
            continue
        for f in sorted(os.listdir(lab_path)):
            if f.endswith(FILE_ENDING):
                case = f[:-len(FILE_ENDING)]
                img = os.path.join(raw_dataset_folder, img_dir, f"{case}_0000{FILE_ENDING}")
                if os.path.isfile(img):
                    pairs.append((case, set_name, img, os.path.join(lab_path, f)))
    if not pairs:
        raise CPS4Error(f"no image/label pairs found in {raw_dataset_folder}. Fix: point to a dataset folder "
                        f"written by nnUNetv2_cps4_make_phantom")
    pairs = sorted(pairs)[:n_cases]
    with open(os.path.join(raw_dataset_folder, "dataset.json")) as f:
        labels = {k: int(v) for k, v in json.load(f)["labels"].items()}
    names = {v: k for k, v in labels.items()}
    colors = _label_colors(labels)
    per_case = 3 if lateral else 2
    panel_w = 1.5
    first = sitk.ReadImage(pairs[0][2])
    aspect = (first.GetSize()[1] * first.GetSpacing()[1]) / (first.GetSize()[0] * first.GetSpacing()[0])
    fig, axes = plt.subplots(1, per_case * len(pairs), figsize=(panel_w * per_case * len(pairs), panel_w * aspect + 0.5),
                             squeeze=False)
    for c, (case, where, img_path, lab_path) in enumerate(pairs):
        img_itk = sitk.ReadImage(img_path)
        img = sitk.GetArrayFromImage(img_itk).astype(np.float32)
        lab = sitk.GetArrayFromImage(sitk.ReadImage(lab_path))
        sp = img_itk.GetSpacing()[::-1]
        mid = img.shape[0] // 2
        vmax = float(np.percentile(img, 99.5))
        extent = (0, img.shape[2] * sp[2], img.shape[1] * sp[1], 0)
        panels = [("image", mid), ("labels", mid)] + ([("lateral", 0)] if lateral else [])
        for p, (kind, sl) in enumerate(panels):
            ax = axes[0, c * per_case + p]
            ax.imshow(img[sl], cmap="gray", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
            if kind == "labels":
                ax.imshow(colors[lab[sl]] * np.array([1, 1, 1, 0.5]), extent=extent, interpolation="nearest")
                for v in np.unique(lab[sl]):
                    if int(v) in names and v > 0 and "/" not in names[int(v)]:
                        rr, cc = np.nonzero(lab[sl] == v)
                        ax.text(extent[1] * 0.02, (rr.mean() + 0.5) * sp[1], names[int(v)], color="yellow",
                                fontsize=6, va="center")
            title = {"image": f"{case} ({where})\nmid-sagittal", "labels": "labels",
                     "lateral": "lateral slice 0"}[kind]
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=1 - 0.42 / height, wspace=0.04)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=130)
    plt.close(fig)
    return out_png
