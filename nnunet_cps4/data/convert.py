"""Turn labeled data into the semi-supervised nnU-Net raw layout (see `nnunet_cps4.data.layout`).

Two entry points:

* `convert_mrspineseg` / `nnUNetv2_cps4_convert_mrspineseg`: the public MRSpineSeg release
  (`SRC/train/MR/Case<N>.nii.gz`, `SRC/train/Mask/mask_case<N>.nii.gz`) -> `DatasetXXX_MRSpineSeg` with a seeded
  labeled / unlabeled / test split. Every image/mask pair is checked first (pairing, readable, 3D, same shape and
  geometry, label values 0..19); nothing is written before all checks pass, and the source is never modified.
* `split_labeled_dataset` / `nnUNetv2_cps4_split_labeled`: any fully labeled nnU-Net raw dataset (any number of
  channels, any file ending) -> a new semi-supervised dataset at a given labeled fraction, so "5 % labeled"
  protocols can be reproduced on one's own data.

VerSe/TPTBox-style vertebra and disc ids are named by `nnunet_cps4.data.spine_labels` before splitting.
"""
import argparse
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import (MRSPINESEG_LABELS, SPLIT_FILE, UNLABELED_FOLDER, create_dataset_folder,
                                        dataset_name, make_split, require_env_folder, write_dataset_json,
                                        write_split)
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import PROMPT_FILE_KEY, PROMPT_TEMPLATES_KEY

#: fraction of the cases held out as test set when --test is not given (and the source has no labelled imagesTs)
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 0

# geometry tolerances: spacing as strict as nnU-Net's own check (np.allclose defaults), origin in mm, direction
# cosines unitless; float noise from header round trips stays well below these
_ORIGIN_ATOL = 1e-3
_DIRECTION_ATOL = 1e-4

TestArg = Union[int, float, None]


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    """The informative line of a (multi-line) library error, e.g. SimpleITK's 'sitk::ERROR: ...' line."""
    lines = [l.strip() for l in str(text).splitlines() if l.strip()]
    for line in lines:
        if "ERROR" in line:
            return line
    return lines[-1] if lines else "unknown error"


def _read_header(path: str) -> sitk.ImageFileReader:
    """Header of an image file (no pixel data), or a CPS4Error naming the file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise CPS4Error(f"cannot read {path} ({_one_line(e)}). Fix: replace it with a valid NIfTI file "
                        f"(.nii.gz) or move it out of the source folder") from None
    return reader


def read_image(path: str) -> sitk.Image:
    """SimpleITK read with a CPS4Error naming the file when it is not a readable image."""
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise CPS4Error(f"cannot read {path} ({_one_line(e)}). Fix: replace it with a valid NIfTI file "
                        f"(.nii.gz) or move it out of the source folder") from None


def _geometry(obj) -> dict:
    """Size, spacing, origin, direction of a sitk.Image or a sitk.ImageFileReader after ReadImageInformation."""
    return {"size": tuple(int(s) for s in obj.GetSize()), "spacing": tuple(obj.GetSpacing()),
            "origin": tuple(obj.GetOrigin()), "direction": tuple(obj.GetDirection())}


def _geometry_mismatch(a: dict, b: dict) -> Optional[str]:
    """None when the two geometries agree, else a short description of the first difference."""
    if a["size"] != b["size"]:
        return f"shape {a['size']} vs {b['size']}"
    if not np.allclose(a["spacing"], b["spacing"]):
        return f"spacing {a['spacing']} vs {b['spacing']}"
    if not np.allclose(a["origin"], b["origin"], rtol=0, atol=_ORIGIN_ATOL):
        return f"origin {a['origin']} vs {b['origin']}"
    if not np.allclose(a["direction"], b["direction"], rtol=0, atol=_DIRECTION_ATOL):
        return f"direction {a['direction']} vs {b['direction']}"
    return None


def _resolve_n_test(test: TestArg, n_cases: int) -> int:
    """--test as a case count: None -> DEFAULT_TEST_FRACTION of the cases, a float in (0, 1) -> that fraction, an
    int -> that many. Fractions are rounded and always leave at least one training case."""
    if test is None:
        test = DEFAULT_TEST_FRACTION
    if isinstance(test, float):
        if test.is_integer():
            return int(test)
        if not 0 < test < 1:
            raise CPS4Error(f"--test {test} is neither a case count nor a fraction in (0, 1)")
        return min(int(round(test * n_cases)), max(n_cases - 1, 0))
    return int(test)


def _test_arg(value: str) -> Union[int, float]:
    """argparse type of --test: an integer case count (0 = no test set) or a fraction in (0, 1)."""
    try:
        if re.fullmatch(r"\d+", value.strip()):
            return int(value)
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a case count nor a fraction") from None
    if not 0 < fraction < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a fraction must lie in (0, 1); use an integer for a count")
    return fraction


def _fraction_arg(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise argparse.ArgumentTypeError(f"{value!r}: the labeled fraction must lie in (0, 1], e.g. 0.05")
    return fraction


def _copy(src: str, dst: str) -> None:
    """Plain byte copy (the source file is only read)."""
    shutil.copyfile(src, dst)


def _split_counts(split: dict) -> str:
    return (f"{len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, {len(split['test'])} test "
            f"(seed {split['seed']}, labeled fraction {split['labeled_fraction']})")


def _write_or_clean_up(folder: str, write) -> None:
    """Run `write()`; if it fails, delete the half-written dataset folder (we just created it) and re-raise."""
    try:
        write()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# MRSpineSeg
# ----------------------------------------------------------------------------------------------------------------
_MR_PATTERN = re.compile(r"^case(\d+)(\.nii(?:\.gz)?)$", re.IGNORECASE)
_MASK_PATTERN = re.compile(r"^mask_case(\d+)(\.nii(?:\.gz)?)$", re.IGNORECASE)
MRSPINESEG_MAX_LABEL = max(MRSPINESEG_LABELS.values())


def _nifti_files(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder)
                  if not f.startswith(".") and f.lower().endswith((".nii", ".nii.gz"))
                  and os.path.isfile(os.path.join(folder, f)))


def _numbered_files(folder: str, pattern: re.Pattern, expected: str) -> Dict[int, str]:
    found: Dict[int, str] = {}
    for f in _nifti_files(folder):
        m = pattern.match(f)
        if m is None:
            raise CPS4Error(f"unexpected file {os.path.join(folder, f)}: files there must be named {expected}. "
                            f"Fix: rename it or move it out of {folder}")
        number = int(m.group(1))
        if number in found:
            raise CPS4Error(f"{os.path.join(folder, f)} and {found[number]} are the same case number {number}. "
                            f"Fix: keep only one of them")
        found[number] = os.path.join(folder, f)
    return found


def find_mrspineseg_cases(src: str) -> Dict[str, Tuple[str, str]]:
    """Pair the images and masks of an MRSpineSeg release: {"Case<N>": (image path, mask path)}.

    `src` is the release folder holding `train/MR` and `train/Mask` (the `train` folder itself is accepted too).
    Raises a CPS4Error for a missing folder, a file not following the naming, an image without a mask or a mask
    without an image.
    """
    if not os.path.isdir(src):
        raise CPS4Error(f"source folder {src} does not exist. Fix: pass the MRSpineSeg folder that contains "
                        f"train/MR and train/Mask")
    train = os.path.join(src, "train")
    if not os.path.isdir(os.path.join(train, "MR")) and os.path.isdir(os.path.join(src, "MR")):
        train = src  # the user pointed at the train folder itself
    mr_dir, mask_dir = os.path.join(train, "MR"), os.path.join(train, "Mask")
    if not os.path.isdir(mr_dir):
        raise CPS4Error(f"{src} has no train/MR folder ({mr_dir} is missing). Fix: pass the MRSpineSeg release "
                        f"folder that contains train/MR/Case<N>.nii.gz and train/Mask/mask_case<N>.nii.gz")
    if not os.path.isdir(mask_dir):
        raise CPS4Error(f"{src} has no train/Mask folder ({mask_dir} is missing). Fix: put the masks "
                        f"(mask_case<N>.nii.gz) into {mask_dir}")
    images = _numbered_files(mr_dir, _MR_PATTERN, "Case<N>.nii.gz")
    masks = _numbered_files(mask_dir, _MASK_PATTERN, "mask_case<N>.nii.gz")
    for number, image in images.items():
        if number not in masks:
            raise CPS4Error(f"image {image} has no mask ({os.path.join(mask_dir, f'mask_case{number}.nii.gz')} is "
                            f"missing). Fix: add the mask, or move the image out of {mr_dir}")
    for number, mask in masks.items():
        if number not in images:
            raise CPS4Error(f"mask {mask} has no image ({os.path.join(mr_dir, f'Case{number}.nii.gz')} is "
                            f"missing). Fix: add the image, or move the mask out of {mask_dir}")
    if not images:
        raise CPS4Error(f"no Case<N>.nii.gz images found in {mr_dir}. Fix: pass the MRSpineSeg release folder")
    return {f"Case{n}": (images[n], masks[n]) for n in sorted(images)}


def check_image_mask_pair(image: str, mask: str, max_label: int = MRSPINESEG_MAX_LABEL) -> dict:
    """Check one image/mask pair; return the image geometry.

    The image is read header-only; the mask is read in full (label values cannot be checked otherwise). Both must
    be 3D single-component images with the same shape, spacing, origin and direction, and the mask may only hold
    integer values 0..max_label. Every failure is a CPS4Error naming the file.
    """
    header = _read_header(image)
    if header.GetDimension() != 3 or header.GetNumberOfComponents() != 1:
        raise CPS4Error(f"{image} is a {header.GetDimension()}D image with {header.GetNumberOfComponents()} "
                        f"component(s); expected a 3D single-channel MR volume. Fix: replace or remove the case")
    seg = read_image(mask)
    if seg.GetDimension() != 3 or seg.GetNumberOfComponentsPerPixel() != 1:
        raise CPS4Error(f"{mask} is a {seg.GetDimension()}D image with {seg.GetNumberOfComponentsPerPixel()} "
                        f"component(s); expected a 3D label volume. Fix: replace or remove the case")
    g_img, g_seg = _geometry(header), _geometry(seg)
    problem = _geometry_mismatch(g_img, g_seg)
    if problem:
        raise CPS4Error(f"mask {mask} does not match image {image}: {problem}. Fix: resample the mask onto the "
                        f"image grid (or copy the image header if only the header is off), or remove the case")
    values = np.unique(sitk.GetArrayViewFromImage(seg))
    bad = [v for v in values if not (float(v).is_integer() and 0 <= v <= max_label)]
    if bad:
        shown = ", ".join(f"{float(v):g}" for v in bad[:5])
        raise CPS4Error(f"mask {mask} holds label value(s) {shown} outside 0..{max_label}. Fix: correct the mask "
                        f"(MRSpineSeg labels are 0 background, 1 S, 2-10 L5..T9, 11-19 discs L5/S..T9/T10)")
    return g_img


def _write_nifti_gz(src: str, dst: str, image: Optional[sitk.Image] = None) -> None:
    """Copy `src` to `dst` (.nii.gz): a byte copy when it is already .nii.gz, else re-written by SimpleITK."""
    if src.lower().endswith(".nii.gz"):
        _copy(src, dst)
    else:
        sitk.WriteImage(image if image is not None else read_image(src), dst, useCompression=True)


def convert_mrspineseg(src: str, dataset_id: int, labeled_fraction: float, n_test: TestArg = None,
                       seed: int = DEFAULT_SEED, name: str = "MRSpineSeg", overwrite: bool = False,
                       verbose: bool = False) -> str:
    """Convert an MRSpineSeg release into `$nnUNet_raw/DatasetXXX_<name>` with a seeded semi-supervised split.

    n_test: test cases (int), a fraction of the cases (float in (0, 1)), or None for DEFAULT_TEST_FRACTION.
    Labeled cases go to imagesTr/labelsTr, unlabeled ones to imagesUnlabeled (their masks are not copied), test
    cases to imagesTs/labelsTs. Case ids are `Case<N>`. Returns the dataset folder.
    """
    raw = require_env_folder("nnUNet_raw")
    full_name = dataset_name(dataset_id, name)
    cases = find_mrspineseg_cases(src)
    split = make_split(list(cases), labeled_fraction, _resolve_n_test(n_test, len(cases)), seed)
    for i, (case, (image, mask)) in enumerate(cases.items()):
        if verbose:
            print(f"checking {case} ({i + 1}/{len(cases)})", flush=True)
        check_image_mask_pair(image, mask)

    folder = create_dataset_folder(raw, dataset_id, name, overwrite=overwrite)

    def write():
        for case in split["labeled"]:
            _write_nifti_gz(cases[case][0], os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            _write_nifti_gz(cases[case][1], os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
        for case in split["unlabeled"]:
            _write_nifti_gz(cases[case][0], os.path.join(folder, UNLABELED_FOLDER, f"{case}_0000.nii.gz"))
        for case in split["test"]:
            _write_nifti_gz(cases[case][0], os.path.join(folder, "imagesTs", f"{case}_0000.nii.gz"))
            _write_nifti_gz(cases[case][1], os.path.join(folder, "labelsTs", f"{case}.nii.gz"))
        source = os.path.abspath(src)
        write_split(folder, split, source=source, generator="nnUNetv2_cps4_convert_mrspineseg",
                    test_source="held out from the source training cases")
        write_dataset_json(
            folder, MRSPINESEG_LABELS, {0: "T2"}, len(split["labeled"]), ".nii.gz",
            generator="nnUNetv2_cps4_convert_mrspineseg", dataset_name_=full_name,
            description=f"MRSpineSeg (sagittal T2 lumbar MR), semi-supervised split: {_split_counts(split)}",
            extra_cps4={"source": source, "seed": int(seed), "labeled_fraction": float(labeled_fraction),
                        "num_unlabeled": len(split["unlabeled"]), "num_test": len(split["test"]),
                        PROMPT_FILE_KEY: "mrspineseg"},
            reference="Pang et al., SpineParseNet: Spine Parsing for Volumetric MR Image by a Two-Stage "
                      "Segmentation Framework With Semantic Image Representation, IEEE TMI 2021",
            license="see the terms of the MRSpineSeg release")

    _write_or_clean_up(folder, write)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# general splitter
# ----------------------------------------------------------------------------------------------------------------
# dataset.json keys the splitter sets itself (or drops because they would be stale in the new layout)
_REPLACED_KEYS = {"channel_names", "modality", "labels", "numTraining", "file_ending", "name", "description",
                  "converted_by", "cps4", "dataset", "numTest", "training", "test"}


def resolve_raw_dataset(source: str) -> str:
    """Folder of a raw nnU-Net dataset given as a folder path, a dataset id ("4", "004") or a name
    ("Dataset004_Hippocampus") under $nnUNet_raw."""
    if os.path.isdir(source):
        return os.path.abspath(source)
    if re.fullmatch(r"\d{1,3}", source) or re.fullmatch(r"Dataset\d{3}_.+", source):
        raw = require_env_folder("nnUNet_raw")
        if source.isdigit():
            prefix = f"Dataset{int(source):03d}_"
            matches = sorted(d for d in os.listdir(raw) if d.startswith(prefix)) if os.path.isdir(raw) else []
            if not matches:
                raise CPS4Error(f"no dataset with id {int(source)} in nnUNet_raw={raw}. Fix: check the id, or pass "
                                f"the dataset folder path")
            if len(matches) > 1:
                raise CPS4Error(f"dataset id {int(source)} is ambiguous in {raw}: {', '.join(matches)}. Fix: pass "
                                f"the full DatasetXXX_Name or the folder path")
            return os.path.join(raw, matches[0])
        folder = os.path.join(raw, source)
        if os.path.isdir(folder):
            return folder
        raise CPS4Error(f"{folder} does not exist. Fix: check the name, or pass the dataset folder path")
    raise CPS4Error(f"source {source!r} is neither a folder nor a dataset id/name in nnUNet_raw. Fix: pass a "
                    f"dataset id (e.g. 4), a name (Dataset004_Hippocampus) or a folder path")


def _image_cases(folder: str, file_ending: str, n_channels: int) -> Dict[str, List[str]]:
    """{case: [channel files in order]} of an nnU-Net image folder; every case must have channels 0..n-1."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    channels: Dict[str, Dict[int, str]] = {}
    for f in sorted(os.listdir(folder)):
        m = pattern.match(f)
        if m:
            channels.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)
    cases = {}
    for case, files in channels.items():
        if sorted(files) != list(range(n_channels)):
            have = ", ".join(f"_{c:04d}" for c in sorted(files))
            raise CPS4Error(f"case {case} in {folder} has channels {have}, but dataset.json lists {n_channels} "
                            f"channel(s) (_0000.._{n_channels - 1:04d}). Fix: add the missing channel files or "
                            f"correct channel_names")
        cases[case] = [files[c] for c in range(n_channels)]
    return cases


def _labeled_cases(source: str, dataset_json: dict, n_channels: int) -> Dict[str, Tuple[List[str], str]]:
    file_ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:  # explicit file lists (nnU-Net's alternative to imagesTr/labelsTr)
        cases = {}
        for case, entry in dataset_json["dataset"].items():
            resolve = lambda p: p if os.path.isabs(os.path.expandvars(p)) else os.path.abspath(
                os.path.join(source, os.path.expandvars(p)))
            images = [resolve(p) for p in entry["images"]]
            if len(images) != n_channels:
                raise CPS4Error(f"case {case} in {source}/dataset.json lists {len(images)} image(s) for "
                                f"{n_channels} channel(s). Fix: correct its 'dataset' entry")
            cases[case] = (images, resolve(entry["label"]))
    else:
        images_tr = os.path.join(source, "imagesTr")
        if not os.path.isdir(images_tr):
            raise CPS4Error(f"{source} has no imagesTr folder. Fix: pass a raw nnU-Net dataset folder")
        cases = {case: (files, os.path.join(source, "labelsTr", case + file_ending))
                 for case, files in _image_cases(images_tr, file_ending, n_channels).items()}
    for case, (images, label) in cases.items():
        for f in images:
            if not os.path.isfile(f):
                raise CPS4Error(f"image {f} of case {case} is missing. Fix: restore it or remove the case")
        if not os.path.isfile(label):
            raise CPS4Error(f"image {images[0]} has no label ({label} is missing). Fix: add the label, or remove "
                            f"the case; the splitter needs a fully labeled dataset")
    if not cases:
        raise CPS4Error(f"no training cases (<case>_0000{file_ending}) found in {source}/imagesTr. Fix: pass a "
                        f"labeled raw nnU-Net dataset")
    return cases


def _source_test_cases(source: str, file_ending: str, n_channels: int) -> Dict[str, Tuple[List[str], str]]:
    """Cases of the source's imagesTs that have a label in labelsTs (empty when there is no labelsTs)."""
    images_ts, labels_ts = os.path.join(source, "imagesTs"), os.path.join(source, "labelsTs")
    if not (os.path.isdir(images_ts) and os.path.isdir(labels_ts)):
        return {}
    cases = _image_cases(images_ts, file_ending, n_channels)
    return {case: (files, os.path.join(labels_ts, case + file_ending)) for case, files in cases.items()
            if os.path.isfile(os.path.join(labels_ts, case + file_ending))}


def _default_split_name(source: str, labeled_fraction: float) -> str:
    base = os.path.basename(os.path.normpath(source))
    m = re.fullmatch(r"Dataset\d{3}_(.+)", base)
    base = re.sub(r"[^A-Za-z0-9_\-]", "_", m.group(1) if m else base)
    return f"{base}_{f'{labeled_fraction * 100:g}'.replace('.', 'p')}pctLabeled"


def split_labeled_dataset(source: str, dataset_id: int, labeled_fraction: float, n_test: TestArg = None,
                          seed: int = DEFAULT_SEED, name: Optional[str] = None, overwrite: bool = False) -> str:
    """Make a semi-supervised copy of a fully labeled raw nnU-Net dataset; return the new dataset folder.

    source: folder path, dataset id or DatasetXXX_Name in $nnUNet_raw. Only the labeled training cases
    (imagesTr/labelsTr, or dataset.json's 'dataset' entries) are split; any number of channels and any file ending
    work. Test set: when n_test is None and the source has imagesTs with labelsTs, those labelled test cases are
    kept as the test set; otherwise n_test cases (int, or fraction in (0, 1); None = DEFAULT_TEST_FRACTION) are
    held out of the training cases. dataset.json keeps the source's entries (labels, channel_names, file_ending,
    regions, reader/writer, licence, ...) with numTraining set to the labeled count and the "cps4" key added.
    Default name: `<source name>_<pct>pctLabeled`. The source is only read.
    """
    source = resolve_raw_dataset(source)
    json_path = os.path.join(source, "dataset.json")
    if not os.path.isfile(json_path):
        raise CPS4Error(f"{source} has no dataset.json. Fix: pass a raw nnU-Net dataset folder")
    try:
        with open(json_path) as f:
            src_json = json.load(f)
    except (OSError, ValueError) as e:
        raise CPS4Error(f"cannot read {json_path} ({_one_line(e)}). Fix: repair the JSON file") from None
    missing = [k for k in ("labels", "file_ending") if k not in src_json]
    channel_names = src_json.get("channel_names", src_json.get("modality"))
    if channel_names is None:
        missing.append("channel_names")
    if missing:
        raise CPS4Error(f"{json_path} lacks {', '.join(missing)}. Fix: add them (nnU-Net v2 dataset.json format)")
    file_ending = src_json["file_ending"]
    n_channels = len(channel_names)

    raw = require_env_folder("nnUNet_raw")
    name = name or _default_split_name(source, labeled_fraction)
    full_name = dataset_name(dataset_id, name)
    if os.path.realpath(os.path.join(raw, full_name)) == os.path.realpath(source):
        raise CPS4Error(f"the new dataset {full_name} would replace its source {source}. Fix: choose another id "
                        f"with -d or another --name")

    cases = _labeled_cases(source, src_json, n_channels)
    source_test = _source_test_cases(source, file_ending, n_channels) if n_test is None else {}
    if source_test:
        split = make_split(list(cases), labeled_fraction, 0, seed)
        split["test"] = sorted(source_test)
        test_source = "imagesTs/labelsTs of the source"
        test_cases = source_test
    else:
        split = make_split(list(cases), labeled_fraction, _resolve_n_test(n_test, len(cases)), seed)
        test_source = "held out from the source training cases"
        test_cases = cases

    folder = create_dataset_folder(raw, dataset_id, name, overwrite=overwrite)

    def copy_images(files: Sequence[str], sub: str, case: str):
        for c, f in enumerate(files):
            _copy(f, os.path.join(folder, sub, f"{case}_{c:04d}{file_ending}"))

    def write():
        for case in split["labeled"]:
            copy_images(cases[case][0], "imagesTr", case)
            _copy(cases[case][1], os.path.join(folder, "labelsTr", case + file_ending))
        for case in split["unlabeled"]:
            copy_images(cases[case][0], UNLABELED_FOLDER, case)
        for case in split["test"]:
            copy_images(test_cases[case][0], "imagesTs", case)
            _copy(test_cases[case][1], os.path.join(folder, "labelsTs", case + file_ending))
        write_split(folder, split, source=source, generator="nnUNetv2_cps4_split_labeled", test_source=test_source)
        kept = {k: v for k, v in src_json.items() if k not in _REPLACED_KEYS}
        write_dataset_json(
            folder, src_json["labels"], channel_names, len(split["labeled"]), file_ending,
            generator="nnUNetv2_cps4_split_labeled", dataset_name_=full_name,
            description=f"Semi-supervised split of {os.path.basename(source)}: {_split_counts(split)}"
                        + (f". Source description: {src_json['description']}" if src_json.get("description") else ""),
            extra_cps4={"source": source, "seed": int(seed), "labeled_fraction": float(labeled_fraction),
                        "num_unlabeled": len(split["unlabeled"]), "num_test": len(split["test"]),
                        "test_source": test_source,
                        # the source's class-prompt settings still apply to the same labels
                        **{k: v for k, v in src_json.get("cps4", {}).items()
                           if k in (PROMPT_FILE_KEY, PROMPT_TEMPLATES_KEY)}})
        # nnU-Net's writer renames or mangles a few optional keys (licence, citation): restore the source's
        # entries verbatim on top of what it wrote
        out_json = os.path.join(folder, "dataset.json")
        with open(out_json) as f:
            written = json.load(f)
        written.update(kept)
        with open(out_json, "w") as f:
            json.dump(written, f, indent=4)

    _write_or_clean_up(folder, write)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# console scripts
# ----------------------------------------------------------------------------------------------------------------
_COMMON_EPILOG = (
    "Split: the seeded split first takes the test cases, then round(F x remaining) cases (at least 1) are labeled "
    "and the rest unlabeled; the same cases, F, T and seed always give the same split, written to "
    "cps4_split.json in the new dataset folder. The source is only read; the new folder is created only after "
    "the inputs are checked, and removed again if writing fails.")


def _add_common(parser: argparse.ArgumentParser, default_name: str, test_default: str) -> None:
    parser.add_argument("-d", "--dataset-id", type=int, required=True, dest="dataset_id",
                        help="id of the new dataset (1-999); it is written to $nnUNet_raw/DatasetXXX_<name>")
    parser.add_argument("--labeled-fraction", type=_fraction_arg, required=True,
                        help="fraction of the training cases (after removing the test set) that keep their "
                             "labels, in (0, 1], e.g. 0.05 for the paper's 5%% protocol")
    parser.add_argument("--test", type=_test_arg, default=None,
                        help=f"test cases: an integer count (0 = no test set) or a fraction in (0, 1). "
                             f"{test_default}")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the split (default: {DEFAULT_SEED})")
    parser.add_argument("--name", default=None, help=f"dataset name (default: {default_name})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with this id and name, only if nnunet-cps4 wrote it")


def _mrspineseg(argv: Optional[Sequence[str]]) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_convert_mrspineseg",
        description="Convert the public MRSpineSeg release (SRC/train/MR/Case<N>.nii.gz, "
                    "SRC/train/Mask/mask_case<N>.nii.gz) into a semi-supervised nnU-Net raw dataset: labeled cases "
                    "in imagesTr/labelsTr, unlabeled images in imagesUnlabeled, test cases in imagesTs/labelsTs; "
                    "case ids Case<N>, one channel (T2), MRSpineSeg's 19 labels. Every image/mask pair is checked "
                    "(readable, 3D, same shape/spacing/origin/direction, labels 0..19) before anything is written.",
        epilog=_COMMON_EPILOG)
    parser.add_argument("src", metavar="SRC", help="MRSpineSeg release folder containing train/MR and train/Mask "
                                                   "(the train folder itself is accepted too)")
    _add_common(parser, "MRSpineSeg",
                f"Default: {DEFAULT_TEST_FRACTION:g} of the cases, rounded (34 of the 172 public cases)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress while checking the cases")
    args = parser.parse_args(argv)
    folder = convert_mrspineseg(args.src, args.dataset_id, args.labeled_fraction, args.test, args.seed,
                                args.name or "MRSpineSeg", args.overwrite, verbose=args.verbose)
    with open(os.path.join(folder, SPLIT_FILE)) as f:
        split = json.load(f)
    print(f"wrote {folder}: {_split_counts(split)}")


def _split(argv: Optional[Sequence[str]]) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_split_labeled",
        description="Make a semi-supervised copy of a fully labeled raw nnU-Net dataset (any number of channels, "
                    "any file ending) at a given labeled fraction, e.g. to reproduce a '5 % labeled' protocol on "
                    "your own data. Labeled cases go to imagesTr/labelsTr, the others' images to imagesUnlabeled "
                    "(their labels are not copied), test cases to imagesTs/labelsTs. dataset.json keeps the "
                    "source's entries, with numTraining = labeled cases and a 'cps4' key added.",
        epilog=_COMMON_EPILOG)
    parser.add_argument("source", metavar="SOURCE",
                        help="the labeled dataset: an id (4), a name (Dataset004_Hippocampus) in $nnUNet_raw, or a "
                             "folder path. Only its labeled training cases are split")
    _add_common(parser, "<source name>_<percent>pctLabeled, e.g. Hippocampus_5pctLabeled",
                f"Default: if the source has imagesTs with labelsTs, its labelled test cases are kept as the test "
                f"set; otherwise {DEFAULT_TEST_FRACTION:g} of the training cases, rounded. Giving --test always "
                f"holds cases out of imagesTr and ignores the source's imagesTs")
    args = parser.parse_args(argv)
    folder = split_labeled_dataset(args.source, args.dataset_id, args.labeled_fraction, args.test, args.seed,
                                   args.name, args.overwrite)
    with open(os.path.join(folder, SPLIT_FILE)) as f:
        split = json.load(f)
    print(f"wrote {folder}: {_split_counts(split)}")


def main_mrspineseg(argv: Optional[Sequence[str]] = None) -> None:
    """Console script nnUNetv2_cps4_convert_mrspineseg."""
    run_cli(_mrspineseg, argv)


def main_split(argv: Optional[Sequence[str]] = None) -> None:
    """Console script nnUNetv2_cps4_split_labeled."""
    run_cli(_split, argv)

