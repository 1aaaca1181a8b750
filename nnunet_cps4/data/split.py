"""The general labeled-fraction splitter, and the test-set size helpers shared with the MRSpineSeg converter.

`split_labeled_dataset` / `nnUNetv2_cps4_split_labeled`: any fully labeled nnU-Net raw dataset (any number of
channels, any file ending) -> a new semi-supervised dataset (see `nnunet_cps4.data.layout`) at a given labeled
fraction, so "5 % labeled" protocols can be reproduced on one's own data. The source is only read.

VerSe/TPTBox-style vertebra and disc ids are named by `nnunet_cps4.data.spine_labels` before splitting.
"""
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence, Tuple, Union

from nnunet_cps4.data.image_io import copy_file, one_line
from nnunet_cps4.data.layout import (UNLABELED_FOLDER, create_dataset_folder, dataset_name, make_split,
                                     require_env_folder, write_dataset_json, write_split)
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import PROMPT_FILE_KEY, PROMPT_TEMPLATES_KEY

#: fraction of the cases held out as test set when --test is not given (and the source has no labelled imagesTs)
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 0

TestArg = Union[int, float, None]


def resolve_n_test(test: TestArg, n_cases: int) -> int:
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


def split_counts(split: dict) -> str:
    return (f"{len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, {len(split['test'])} test "
            f"(seed {split['seed']}, labeled fraction {split['labeled_fraction']})")


def write_or_clean_up(folder: str, write) -> None:
    """Run `write()`; if it fails, delete the half-written dataset folder (we just created it) and re-raise."""
    try:
        write()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


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
        raise CPS4Error(f"cannot read {json_path} ({one_line(e)}). Fix: repair the JSON file") from None
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
        split = make_split(list(cases), labeled_fraction, resolve_n_test(n_test, len(cases)), seed)
        test_source = "held out from the source training cases"
        test_cases = cases

    folder = create_dataset_folder(raw, dataset_id, name, overwrite=overwrite)

    def copy_images(files: Sequence[str], sub: str, case: str):
        for c, f in enumerate(files):
            copy_file(f, os.path.join(folder, sub, f"{case}_{c:04d}{file_ending}"))

    def write():
        for case in split["labeled"]:
            copy_images(cases[case][0], "imagesTr", case)
            copy_file(cases[case][1], os.path.join(folder, "labelsTr", case + file_ending))
        for case in split["unlabeled"]:
            copy_images(cases[case][0], UNLABELED_FOLDER, case)
        for case in split["test"]:
            copy_images(test_cases[case][0], "imagesTs", case)
            copy_file(test_cases[case][1], os.path.join(folder, "labelsTs", case + file_ending))
        write_split(folder, split, source=source, generator="nnUNetv2_cps4_split_labeled", test_source=test_source)
        kept = {k: v for k, v in src_json.items() if k not in _REPLACED_KEYS}
        write_dataset_json(
            folder, src_json["labels"], channel_names, len(split["labeled"]), file_ending,
            generator="nnUNetv2_cps4_split_labeled", dataset_name_=full_name,
            description=f"Semi-supervised split of {os.path.basename(source)}: {split_counts(split)}"
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

    write_or_clean_up(folder, write)
    return folder
