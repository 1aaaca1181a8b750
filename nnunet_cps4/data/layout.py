"""The semi-supervised nnU-Net raw layout, its label convention and its seeded split.

```
nnUNet_raw/DatasetXXX_Name/
  imagesTr/ labelsTr/   labeled training cases only (nnU-Net plans and splits see only these)
  imagesUnlabeled/      unlabeled training images, same naming (case_0000.nii.gz) and channels
  imagesTs/ labelsTs/   test cases, never used for training or model selection
  dataset.json          standard nnU-Net file; plugin settings live under the key "cps4"
  cps4_split.json       which source case went where, with the seed and labeled fraction
```

Used by the phantom generator and the converters so every dataset this plugin writes looks the same.
"""
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_cps4.errors import CPS4Error

UNLABELED_FOLDER = "imagesUnlabeled"
CPS4_JSON_KEY = "cps4"
SPLIT_FILE = "cps4_split.json"

# MRSpineSeg (SpineParseNet, Pang et al., TMI 2021) label ids and names; the names are the dataset.json label
# keys and the keys of the class-prompt files.
MRSPINESEG_LABELS: Dict[str, int] = {
    "background": 0,
    "S": 1, "L5": 2, "L4": 3, "L3": 4, "L2": 5, "L1": 6, "T12": 7, "T11": 8, "T10": 9, "T9": 10,
    "L5/S": 11, "L4/L5": 12, "L3/L4": 13, "L2/L3": 14, "L1/L2": 15, "T12/L1": 16, "T11/T12": 17,
    "T10/T11": 18, "T9/T10": 19,
}
# The lumbar subset (sacrum, L5-L1, discs L5/S-L1/L2) with consecutive ids, as nnU-Net requires: the label set of
# lumbar-only data such as the phantom's lumbar field of view (prompt file `mrspineseg_lumbar`).
LUMBAR_LABELS: Dict[str, int] = {
    "background": 0, "S": 1, "L5": 2, "L4": 3, "L3": 4, "L2": 5, "L1": 6,
    "L5/S": 7, "L4/L5": 8, "L3/L4": 9, "L2/L3": 10, "L1/L2": 11,
}


def require_env_folder(var: str) -> str:
    """The folder named by an nnU-Net environment variable, or a CPS4Error saying how to set it."""
    value = os.environ.get(var)
    if not value:
        raise CPS4Error(f"environment variable {var} is not set. Fix: export {var}=/path/to/folder "
                        f"(nnU-Net's standard paths: nnUNet_raw, nnUNet_preprocessed, nnUNet_results)")
    return value


def resolve_dataset_name(dataset: str) -> str:
    """DatasetXXX_Name for a dataset id or name given on a command line, or a CPS4Error saying what was searched."""
    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset)
    except RuntimeError as e:
        raise CPS4Error(f"dataset {dataset!r} not found ({str(e).splitlines()[0]}). Fix: check the id/name and "
                        f"nnUNet_raw, nnUNet_preprocessed, nnUNet_results") from None


def dataset_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise CPS4Error(f"dataset id {dataset_id} is out of range. Fix: use an id between 1 and 999 (-d)")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise CPS4Error(f"dataset name {name!r} may only contain letters, digits, '_' and '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def make_split(case_ids: Sequence[str], labeled_fraction: float, n_test: int, seed: int) -> dict:
    """Seeded split of `case_ids` into test, labeled and unlabeled cases.

    `n_test` cases go to the test set first; of the rest, round(labeled_fraction * n) (at least 1) are labeled,
    the remainder unlabeled. The same ids, fraction, n_test and seed always give the same split.
    """
    case_ids = sorted(case_ids)
    if not 0 < labeled_fraction <= 1:
        raise CPS4Error(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}")
    if n_test < 0 or n_test >= len(case_ids):
        raise CPS4Error(f"--test {n_test} leaves no training case out of {len(case_ids)}. "
                        f"Fix: choose --test between 0 and {len(case_ids) - 1}")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    shuffled = [case_ids[i] for i in order]
    test, train = shuffled[:n_test], shuffled[n_test:]
    n_labeled = min(len(train), max(1, int(round(labeled_fraction * len(train)))))
    return {
        "seed": int(seed),
        "labeled_fraction": float(labeled_fraction),
        "labeled": sorted(train[:n_labeled]),
        "unlabeled": sorted(train[n_labeled:]),
        "test": sorted(test),
    }


def _generator_of(folder: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, "dataset.json")) as f:
            return json.load(f).get(CPS4_JSON_KEY, {}).get("generator")
    except (OSError, ValueError):
        return None


def create_dataset_folder(raw_root: str, dataset_id: int, name: str, overwrite: bool = False) -> str:
    """Create an empty semi-supervised dataset folder under `raw_root` and return its path.

    Refuses to reuse an id that another dataset already has, and never deletes a folder this plugin did not
    write: `overwrite` only replaces a dataset whose dataset.json says nnunet-cps4 generated it.
    """
    full_name = dataset_name(dataset_id, name)
    os.makedirs(raw_root, exist_ok=True)
    prefix = f"Dataset{int(dataset_id):03d}_"
    clashes = [d for d in os.listdir(raw_root) if d.startswith(prefix) and d != full_name]
    if clashes:
        raise CPS4Error(f"dataset id {dataset_id} is already used by {os.path.join(raw_root, clashes[0])}. "
                        f"Fix: choose another id with -d")
    folder = os.path.join(raw_root, full_name)
    if os.path.isdir(folder) and os.listdir(folder):
        if not overwrite:
            raise CPS4Error(f"{folder} already exists and is not empty. Fix: choose another id with -d, or "
                            f"pass --overwrite to replace a dataset that nnunet-cps4 generated")
        if _generator_of(folder) is None:
            raise CPS4Error(f"{folder} was not written by nnunet-cps4 (no '{CPS4_JSON_KEY}.generator' in its "
                            f"dataset.json), so --overwrite will not delete it. Fix: choose another id with -d")
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER, "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    return folder


def write_dataset_json(folder: str, labels: Dict[str, int], channel_names: Dict[int, str], num_labeled: int,
                       file_ending: str, generator: str, dataset_name_: str, description: str = "",
                       extra_cps4: Optional[dict] = None, **kwargs) -> None:
    """dataset.json through nnU-Net's own writer; plugin information under the "cps4" key."""
    cps4 = {"generator": generator, "unlabeled_folder": UNLABELED_FOLDER, "split_file": SPLIT_FILE}
    cps4.update(extra_cps4 or {})
    generate_dataset_json(folder, dict(channel_names), dict(labels), num_labeled, file_ending,
                          dataset_name=dataset_name_, description=description, converted_by="nnunet-cps4",
                          **{CPS4_JSON_KEY: cps4}, **kwargs)


def write_split(folder: str, split: dict, **extra) -> str:
    path = os.path.join(folder, SPLIT_FILE)
    with open(path, "w") as f:
        json.dump({**split, **extra}, f, indent=2)
    return path


def case_identifiers(image_folder: str, file_ending: str) -> List[str]:
    """Case ids of an nnU-Net image folder (files named <case>_<XXXX><file_ending>)."""
    ids = set()
    for f in os.listdir(image_folder):
        if f.endswith(file_ending) and len(f) > len(file_ending) + 5:
            ids.add(f[:-len(file_ending) - 5])
    return sorted(ids)
