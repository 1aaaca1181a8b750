"""Unlabeled images: finding and checking them in the raw dataset, preprocessing them with the plans' own
preprocessor, and loading them in training.

Raw images live in `nnUNet_raw/DatasetXXX/imagesUnlabeled/` (same naming and channels as imagesTr). nnU-Net
ignores that folder, so its fingerprint, plans and cross-validation splits stay labeled-only. We preprocess the
images exactly the way inference does (`preprocessor.run_case_save(out, files, None, ...)`) into a sibling of
the configuration's preprocessed folder, e.g. `nnUNet_preprocessed/DatasetXXX/nnUNetPlans_2d_unlabeled/` — never
inside `nnUNetPlans_2d/`, where nnU-Net's do_split would put the cases into folds. A manifest (a hash of the
plans settings that shape preprocessing + name, size and mtime of every input file) makes changed plans or
added, removed or edited images trigger re-preprocessing of what changed.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from time import sleep
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json, load_pickle, write_pickle
from tqdm import tqdm

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import UNLABELED_FOLDER, case_identifiers, require_env_folder, resolve_dataset_name
from nnunet_cps4.errors import CPS4Error

MANIFEST_FILE = "cps4_unlabeled_manifest.json"
MANIFEST_VERSION = 1
PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "patch_size", "normalization_schemes",
                      "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                      "resampling_fn_seg_kwargs")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def unlabeled_folder_name(data_identifier: str) -> str:
    return data_identifier + "_unlabeled"


def collect_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """{case id: [channel files in channel order]} for `imagesUnlabeled/`, after checking every file name.

    Raises CPS4Error (naming the file and the fix) for: missing or empty folder, a file with the wrong ending or
    without the `_XXXX` channel suffix, missing or extra channels, and a case id that is also a labeled (imagesTr)
    or test (imagesTs) case.
    """
    folder = os.path.join(raw_dataset_folder, UNLABELED_FOLDER)
    file_ending = dataset_json["file_ending"]
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    layout_hint = f"name files <case>_0000{file_ending} (one file per channel, as in imagesTr)"
    if not os.path.isdir(folder):
        raise CPS4Error(f"{folder} does not exist, but semi-supervised training needs unlabeled images. "
                        f"Fix: create it and put the unlabeled training images there; {layout_hint}")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    if not names:
        raise CPS4Error(f"{folder} is empty, but semi-supervised training needs unlabeled images. "
                        f"Fix: put the unlabeled training images there; {layout_hint}")
    cases: Dict[str, Dict[int, str]] = {}
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith(file_ending):
            raise CPS4Error(f"{path} does not end with the dataset's file_ending {file_ending!r} (dataset.json). "
                            f"Fix: convert it to {file_ending} or move it out of {UNLABELED_FOLDER}/")
        m = _CHANNEL_SUFFIX.match(name[:-len(file_ending)])
        if m is None:
            raise CPS4Error(f"{path} has no channel suffix. Fix: rename it; {layout_hint}")
        channel = int(m.group("channel"))
        if channel >= n_channels:
            raise CPS4Error(f"{path} is channel {channel}, but dataset.json lists {n_channels} channel(s) "
                            f"(channel_names). Fix: remove it or add the channel to every case")
        cases.setdefault(m.group("case"), {})[channel] = path
    for case, channels in cases.items():
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            expected = ", ".join(f"{case}_{c:04d}{file_ending}" for c in missing)
            raise CPS4Error(f"unlabeled case {case!r} in {folder} lacks channel(s) {missing}: dataset.json lists "
                            f"{n_channels} channel(s). Fix: add {expected} or remove the case")
    for other in ("imagesTr", "imagesTs"):
        other_folder = os.path.join(raw_dataset_folder, other)
        if os.path.isdir(other_folder):
            clash = sorted(set(cases) & set(case_identifiers(other_folder, file_ending)))
            if clash:
                role = "labeled training" if other == "imagesTr" else "test"
                raise CPS4Error(f"{cases[clash[0]][0]}: case id {clash[0]!r} is also a {role} case in "
                                f"{other_folder}. Fix: an image belongs to one set only — rename or remove it "
                                f"from {UNLABELED_FOLDER}/ ({len(clash)} clashing id(s): {clash[:5]})")
    return {case: [channels[c] for c in range(n_channels)] for case, channels in sorted(cases.items())}


def plans_fingerprint(plans_manager, configuration_manager, dataset_json: dict) -> str:
    """Hash of everything in the plans and dataset.json that changes how an image is preprocessed."""
    # the configuration's keys that shape preprocessing (not batch size or architecture: a plans copy with another
    # batch size reuses the same preprocessed images); patch_size only changes blosc2 chunking, kept for that
    config = configuration_manager.configuration
    relevant = {
        "configuration": {k: config.get(k) for k in PREPROCESSING_KEYS},
        "transpose_forward": plans_manager.transpose_forward,
        "intensity": plans_manager.foreground_intensity_properties_per_channel,
        "reader": plans_manager.plans.get("image_reader_writer"),
        "channels": dataset_json.get("channel_names", dataset_json.get("modality")),
        "file_ending": dataset_json["file_ending"],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamps(files: List[str]) -> List[list]:
    return [[os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]


def _check_header(path: str) -> None:
    """One channel per file, at most 3 spatial dimensions (read from the header only).

    Files SimpleITK cannot parse are left to the dataset's own reader, which reports them when preprocessing.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return
    n_components, dimension = reader.GetNumberOfComponents(), reader.GetDimension()
    n_read = n_components * (reader.GetSize()[-1] if dimension == 4 else 1)
    if n_read != 1 or dimension > 4:
        raise CPS4Error(f"{path}: holds {n_read} channel(s) ({dimension}D, {n_components} component(s) per "
                        f"voxel), but every image file must hold one channel. Fix: store one channel per file "
                        f"(<case>_0000, <case>_0001, ...) as in imagesTr and list them in dataset.json channel_names")


def _preprocess_case(preprocessor, output_truncated: str, files: List[str], plans_manager, configuration_manager,
                     dataset_json: dict) -> None:
    """Preprocess one unlabeled case the way inference does; any reader failure names the files."""
    for f in files:
        _check_header(f)
    try:
        preprocessor.run_case_save(output_truncated, files, None, plans_manager, configuration_manager,
                                   dataset_json)
    except Exception as e:  # the readers raise all sorts of types for corrupt files
        raise CPS4Error(f"{', '.join(files)}: could not be read/preprocessed ({type(e).__name__}: {e}). "
                        f"Fix: replace the file(s) with a readable image or remove the case from "
                        f"{UNLABELED_FOLDER}/") from None
    properties = load_pickle(output_truncated + ".pkl")
    # the data loader reads class_locations; an unlabeled case has none (and is never oversampled)
    properties["class_locations"] = {}
    properties["cps4_unlabeled"] = True
    write_pickle(properties, output_truncated + ".pkl")


def _remove_case(folder: str, case: str) -> None:
    for suffix in (".b2nd", "_seg.b2nd", ".pkl", ".npz", ".npy", "_seg.npy"):
        path = os.path.join(folder, case + suffix)
        if os.path.isfile(path):
            os.remove(path)


def preprocess_unlabeled(plans_manager, configuration_manager, configuration_name: str, dataset_json: dict,
                         raw_dataset_folder: str, preprocessed_dataset_folder_base: str,
                         num_processes: int = 2, verbose: bool = True) -> str:
    """Bring `<data_identifier>_unlabeled/` up to date with imagesUnlabeled/ and the plans; return its path.

    Only what the manifest says is missing or stale is preprocessed: everything after a plans change, otherwise
    the added or edited cases (removed cases are deleted from the output).
    """
    cases = collect_unlabeled_cases(raw_dataset_folder, dataset_json)
    out_folder = os.path.join(preprocessed_dataset_folder_base,
                              unlabeled_folder_name(configuration_manager.data_identifier))
    manifest_path = os.path.join(out_folder, MANIFEST_FILE)
    fingerprint = plans_fingerprint(plans_manager, configuration_manager, dataset_json)
    stamps = {case: _file_stamps(files) for case, files in cases.items()}

    old = {}
    if os.path.isfile(manifest_path):
        old = load_json(manifest_path)
    if old.get("version") != MANIFEST_VERSION or old.get("plans_fingerprint") != fingerprint:
        if os.path.isdir(out_folder):
            shutil.rmtree(out_folder)
        old = {}
    os.makedirs(out_folder, exist_ok=True)
    old_cases = old.get("cases", {})
    for case in set(old_cases) - set(cases):
        _remove_case(out_folder, case)
    todo = [c for c in cases if old_cases.get(c) != stamps[c]
            or not os.path.isfile(os.path.join(out_folder, c + ".pkl"))]

    def write_manifest(done_cases):
        manifest = {"version": MANIFEST_VERSION, "configuration": configuration_name,
                    "plans_name": plans_manager.plans_name, "plans_fingerprint": fingerprint,
                    "raw_folder": os.path.join(raw_dataset_folder, UNLABELED_FOLDER),
                    "cases": {c: stamps[c] for c in done_cases}}
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)

    if not todo:
        if verbose:
            print(f"Unlabeled images up to date: {len(cases)} case(s) in {out_folder}")
        return out_folder

    # mark the todo cases as not done before starting, so an interrupted run redoes them
    write_manifest([c for c in cases if c not in todo])
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    args = [(preprocessor, os.path.join(out_folder, c), cases[c], plans_manager, configuration_manager,
             dataset_json) for c in todo]
    desc = f"Preprocessing {len(todo)} unlabeled case(s) ({configuration_name})"
    if num_processes <= 1:
        for a in tqdm(args, desc=desc, disable=not verbose):
            _preprocess_case(*a)
    else:
        # same pattern as nnU-Net's DefaultPreprocessor.run: spawn pool, progress bar, dead-worker detection
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            workers = list(pool._pool)
            results = [pool.starmap_async(_preprocess_case, (a,)) for a in args]
            remaining = set(range(len(results)))
            with tqdm(total=len(results), desc=desc, disable=not verbose) as bar:
                while remaining:
                    if not all(w.is_alive() for w in workers):
                        raise RuntimeError("A preprocessing worker died (out of memory?). Try fewer processes "
                                           "(-np).")
                    done = [i for i in remaining if results[i].ready()]
                    for i in done:
                        results[i].get()
                        bar.update()
                    remaining -= set(done)
                    sleep(0.05)
    write_manifest(list(cases))
    return out_folder


def ensure_unlabeled_preprocessed(plans_manager, configuration_manager, configuration_name: str,
                                  dataset_json: dict, num_processes: int = 2) -> str:
    """What trainers call at start: preprocess when missing or stale; return the folder."""
    preprocessed_base = os.path.join(require_env_folder("nnUNet_preprocessed"), plans_manager.dataset_name)
    raw_root = os.environ.get("nnUNet_raw")
    raw_dataset_folder = os.path.join(raw_root, plans_manager.dataset_name) if raw_root else None
    if raw_dataset_folder is None or not os.path.isdir(raw_dataset_folder):
        out_folder = os.path.join(preprocessed_base, unlabeled_folder_name(configuration_manager.data_identifier))
        if os.path.isfile(os.path.join(out_folder, MANIFEST_FILE)):
            print(f"WARNING: raw dataset {plans_manager.dataset_name} not found (nnUNet_raw={raw_root}); using the "
                  f"existing preprocessed unlabeled images in {out_folder} without checking them for changes")
            return out_folder
        raise CPS4Error(f"cannot find the raw dataset {plans_manager.dataset_name} (nnUNet_raw={raw_root}) to "
                        f"preprocess its {UNLABELED_FOLDER}/. Fix: export nnUNet_raw to the folder holding "
                        f"{plans_manager.dataset_name}")
    return preprocess_unlabeled(plans_manager, configuration_manager, configuration_name, dataset_json,
                                raw_dataset_folder, preprocessed_base, num_processes)


def _main(argv: Optional[Sequence[str]] = None) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_preprocess_unlabeled",
        description=f"Preprocess nnUNet_raw/DatasetXXX/{UNLABELED_FOLDER}/ with the plans' own preprocessor into "
                    f"nnUNet_preprocessed/DatasetXXX/<plans>_<configuration>_unlabeled/. Run after "
                    f"nnUNetv2_plan_and_preprocess; semi-supervised trainers also run it at start when needed.")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", nargs="+", default=["2d"], help="configuration(s), default 2d")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier, default nnUNetPlans")
    parser.add_argument("-np", type=int, default=int(os.environ.get("nnUNet_def_n_proc", 2)),
                        help="number of processes (default $nnUNet_def_n_proc or 2)")
    args = parser.parse_args(argv)

    name = resolve_dataset_name(args.d)
    preprocessed_base = os.path.join(require_env_folder("nnUNet_preprocessed"), name)
    plans_file = os.path.join(preprocessed_base, args.p + ".json")
    if not os.path.isfile(plans_file):
        raise CPS4Error(f"{plans_file} not found. Fix: run nnUNetv2_plan_and_preprocess -d {args.d} first "
                        f"(or pass the right plans identifier with -p)")
    plans_manager = PlansManager(plans_file)
    dataset_json = load_json(os.path.join(preprocessed_base, "dataset.json"))
    raw_dataset_folder = os.path.join(require_env_folder("nnUNet_raw"), name)
    for configuration in args.c:
        if configuration not in plans_manager.available_configurations:
            raise CPS4Error(f"configuration {configuration!r} is not in {plans_file} "
                            f"(available: {plans_manager.available_configurations}). Fix: choose one of those")
        out = preprocess_unlabeled(plans_manager, plans_manager.get_configuration(configuration), configuration,
                                   dataset_json, raw_dataset_folder, preprocessed_base, args.np)
        print(f"{configuration}: unlabeled images ready in {out}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)


def build_unlabeled_dataloader(folder: str, dataset_class, batch_size: int, initial_patch_size, patch_size,
                               label_manager, transforms, num_processes: int, pin_memory: bool):
    """nnU-Net's own data loader and augmenter over the preprocessed unlabeled cases.

    Never oversamples foreground (unlabeled cases have no class_locations) and samples patches uniformly.
    """
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    dataset = dataset_class(folder)
    if len(dataset.identifiers) == 0:
        raise CPS4Error(f"{folder} holds no preprocessed unlabeled case. Fix: run nnUNetv2_cps4_preprocess_unlabeled")
    loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size, patch_size, label_manager,
                              oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                              transforms=transforms, probabilistic_oversampling=False)
    # With an ignore label nnU-Net samples patches from annotated voxels; unlabeled cases have none, so sample
    # uniformly instead of warning on every patch.
    loader.has_ignore = False
    if num_processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=num_processes,
                                        num_cached=max(6, num_processes // 2), seeds=None, pin_memory=pin_memory,
                                        wait_time=0.002)
