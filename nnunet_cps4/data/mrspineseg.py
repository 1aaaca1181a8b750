"""The MRSpineSeg converter: the public release -> the semi-supervised nnU-Net raw layout (`nnunet_cps4.data.layout`).

`convert_mrspineseg` / `nnUNetv2_cps4_convert_mrspineseg`: the release (`SRC/train/MR/Case<N>.nii.gz`,
`SRC/train/Mask/mask_case<N>.nii.gz`) -> `DatasetXXX_MRSpineSeg` with a seeded labeled / unlabeled / test split.
Every image/mask pair is checked first (pairing, readable, 3D, same shape and geometry, label values 0..19); nothing
is written before all checks pass, and the source is never modified.
"""
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_cps4.data.image_io import geometry, geometry_mismatch, read_header, read_image, write_nifti_gz
from nnunet_cps4.data.layout import (MRSPINESEG_LABELS, UNLABELED_FOLDER, create_dataset_folder, dataset_name,
                                     make_split, require_env_folder, write_dataset_json, write_split)
from nnunet_cps4.data.split import DEFAULT_SEED, TestArg, resolve_n_test, split_counts, write_or_clean_up
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import PROMPT_FILE_KEY

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
    header = read_header(image)
    if header.GetDimension() != 3 or header.GetNumberOfComponents() != 1:
        raise CPS4Error(f"{image} is a {header.GetDimension()}D image with {header.GetNumberOfComponents()} "
                        f"component(s); expected a 3D single-channel MR volume. Fix: replace or remove the case")
    seg = read_image(mask)
    if seg.GetDimension() != 3 or seg.GetNumberOfComponentsPerPixel() != 1:
        raise CPS4Error(f"{mask} is a {seg.GetDimension()}D image with {seg.GetNumberOfComponentsPerPixel()} "
                        f"component(s); expected a 3D label volume. Fix: replace or remove the case")
    g_img, g_seg = geometry(header), geometry(seg)
    problem = geometry_mismatch(g_img, g_seg)
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
    split = make_split(list(cases), labeled_fraction, resolve_n_test(n_test, len(cases)), seed)
    for i, (case, (image, mask)) in enumerate(cases.items()):
        if verbose:
            print(f"checking {case} ({i + 1}/{len(cases)})", flush=True)
        check_image_mask_pair(image, mask)

    folder = create_dataset_folder(raw, dataset_id, name, overwrite=overwrite)

    def write():
        for case in split["labeled"]:
            write_nifti_gz(cases[case][0], os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            write_nifti_gz(cases[case][1], os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
        for case in split["unlabeled"]:
            write_nifti_gz(cases[case][0], os.path.join(folder, UNLABELED_FOLDER, f"{case}_0000.nii.gz"))
        for case in split["test"]:
            write_nifti_gz(cases[case][0], os.path.join(folder, "imagesTs", f"{case}_0000.nii.gz"))
            write_nifti_gz(cases[case][1], os.path.join(folder, "labelsTs", f"{case}.nii.gz"))
        source = os.path.abspath(src)
        write_split(folder, split, source=source, generator="nnUNetv2_cps4_convert_mrspineseg",
                    test_source="held out from the source training cases")
        write_dataset_json(
            folder, MRSPINESEG_LABELS, {0: "T2"}, len(split["labeled"]), ".nii.gz",
            generator="nnUNetv2_cps4_convert_mrspineseg", dataset_name_=full_name,
            description=f"MRSpineSeg (sagittal T2 lumbar MR), semi-supervised split: {split_counts(split)}",
            extra_cps4={"source": source, "seed": int(seed), "labeled_fraction": float(labeled_fraction),
                        "num_unlabeled": len(split["unlabeled"]), "num_test": len(split["test"]),
                        PROMPT_FILE_KEY: "mrspineseg"},
            reference="Pang et al., SpineParseNet: Spine Parsing for Volumetric MR Image by a Two-Stage "
                      "Segmentation Framework With Semantic Image Representation, IEEE TMI 2021",
            license="see the terms of the MRSpineSeg release")

    write_or_clean_up(folder, write)
    return folder
