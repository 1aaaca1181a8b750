"""Unlabeled images: finding and checking them in the raw dataset, preprocessing them with the plans' own
preprocessor, and loading them in training.

Raw images live in `nnUNet_raw/DatasetXXX/imagesUnlabeled/` (same naming and channels as imagesTr). nnU-Net
ignores that folder, so its fingerprint, plans and cross-validation splits stay labeled-only. We preprocess the
images exactly the way inference does (`preprocessor.run_case_save(out, files, None, ...)`) into a sibling of
the configuration's preprocessed folder, e.g. `nnUNet_preprocessed/DatasetXXX/nnUNetPlans_2d_unlabeled/` — never
inside `nnUNetPlans_2d/`, where nnU-Net's do_split would put the cases into folds. The raw data is only read.

Preprocessing is idempotent and recovers from any interruption:
- A manifest holds a hash of the plans settings that shape preprocessing and, per case, the name, size and
  mtime_ns of its input files. A case is entered only once its outputs are complete and in place, so a case that
  is missing from the manifest, or whose files changed, is redone; changed plans redo everything. (No content
  hash: it would read every image on every run; an edit that keeps size and mtime_ns is not detected.)
- Each case is preprocessed into a hidden temporary folder inside the output folder; then the case's old outputs
  are removed and the new files are moved into place (os.replace, the .pkl last). A kill at any moment leaves
  the old complete case or a case without manifest entry (redone next run); leftover temporary folders and
  outputs of removed cases are cleaned up at the start of the next run.
- A lock file in the output folder serialises concurrent runs (e.g. several folds starting at once).
- Before any case is preprocessed, every new or changed image is read once with the plans' reader and checked
  (see `check_unlabeled_case`); unchanged cases are not read again.
"""
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from time import monotonic, sleep
from typing import Dict, List, Optional

from batchgenerators.utilities.file_and_folder_operations import load_json, load_pickle, write_pickle
from tqdm import tqdm

from nnunet_cps4.data.layout import UNLABELED_FOLDER, case_identifiers, require_env_folder
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.nnunet.unlabeled_checks import (file_stamps, error_summary, check_unlabeled_case,
                                                 labeled_geometry_reference)

MANIFEST_FILE = "cps4_unlabeled_manifest.json"
MANIFEST_VERSION = 2  # 2: entries are written only for complete cases (version 1 caches are rebuilt once)
LOCK_FILE = ".cps4_lock"
TEMP_PREFIX = ".cps4_tmp_"  # temporary per-case folders and the manifest being written; removed on the next run
CASE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl", ".npz", ".npy", "_seg.npy")  # what nnU-Net writes per case
COMPLETE_CASE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")  # what run_case_save leaves for a finished case
MANIFEST_WRITE_INTERVAL_S = 2.0
PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "patch_size", "normalization_schemes",
                      "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                      "resampling_fn_seg_kwargs")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def unlabeled_folder_name(data_identifier: str) -> str:
    return data_identifier + "_unlabeled"


def collect_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """{case id: [channel files in channel order]} for `imagesUnlabeled/`, after checking every file name.

    Raises CPS4Error (naming the file and the fix) for: missing or empty folder, a file with the wrong ending or
    without the `_XXXX` channel suffix, a case id ending in `_seg`, missing or extra channels, and a case id that
    is also a labeled (imagesTr) or test (imagesTs) case. File names only: the content is checked by
    `check_unlabeled_case`.
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
        if m.group("case").endswith("_seg"):
            raise CPS4Error(f"{path}: a case id ending in '_seg' clashes with nnU-Net's name for preprocessed "
                            f"segmentations (<case>_seg.b2nd), so nnU-Net would skip the case. Fix: rename it")
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


# ---------------------------------------------------------------------------------------------------------------
# the output folder


def _preprocess_case_to_temp(preprocessor, out_folder: str, case: str, files: List[str], plans_manager,
                             configuration_manager, dataset_json: dict) -> str:
    """Preprocess one case the way inference does into a new hidden folder in out_folder; return that folder."""
    tmp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{case}_", dir=out_folder)
    try:
        truncated = os.path.join(tmp, case)
        try:
            preprocessor.run_case_save(truncated, files, None, plans_manager, configuration_manager, dataset_json)
        except Exception as e:  # the readers raise all sorts of types for corrupt files
            raise CPS4Error(f"{', '.join(files)}: could not be read/preprocessed ({error_summary(e)}). Fix: replace "
                            f"the file(s) with a readable image or remove the case from {UNLABELED_FOLDER}/") \
                from None
        properties = load_pickle(truncated + ".pkl")
        # the data loader reads class_locations; an unlabeled case has none (and is never oversampled)
        properties["class_locations"] = {}
        properties["cps4_unlabeled"] = True
        write_pickle(properties, truncated + ".pkl")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _remove_case(folder: str, case: str) -> None:
    for suffix in CASE_SUFFIXES:
        path = os.path.join(folder, case + suffix)
        if os.path.isfile(path):
            os.remove(path)


def _install_case(out_folder: str, case: str, tmp: str) -> None:
    """Replace the case's outputs by the files in tmp: old outputs first removed, the .pkl moved last."""
    names = sorted(os.listdir(tmp), key=lambda n: n.endswith(".pkl"))
    _remove_case(out_folder, case)
    for name in names:
        os.replace(os.path.join(tmp, name), os.path.join(out_folder, name))
    os.rmdir(tmp)


def _case_complete(out_folder: str, case: str) -> bool:
    return all(os.path.isfile(os.path.join(out_folder, case + s)) for s in COMPLETE_CASE_SUFFIXES)


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _remove_leftovers(out_folder: str, cases) -> None:
    """Temporary folders/files of interrupted runs, and the outputs of cases no longer in imagesUnlabeled/."""
    for name in os.listdir(out_folder):
        if name.startswith(TEMP_PREFIX):
            _remove_path(os.path.join(out_folder, name))
        elif name not in (MANIFEST_FILE, LOCK_FILE):
            owners = [name[:-len(s)] for s in CASE_SUFFIXES if name.endswith(s)]
            if owners and not any(o in cases for o in owners):
                _remove_path(os.path.join(out_folder, name))


def _clear_folder(out_folder: str) -> None:
    """Everything but the lock; the manifest goes first so an interrupted clear leaves nothing marked done."""
    manifest = os.path.join(out_folder, MANIFEST_FILE)
    if os.path.isfile(manifest):
        os.remove(manifest)
    for name in os.listdir(out_folder):
        if name != LOCK_FILE:
            _remove_path(os.path.join(out_folder, name))


def _load_manifest(path: str) -> dict:
    try:
        manifest = load_json(path)
    except (OSError, ValueError):  # missing, or cut short by an older version
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = os.path.join(os.path.dirname(path), TEMP_PREFIX + os.path.basename(path))
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


@contextmanager
def _folder_lock(out_folder: str):
    """An exclusive lock on out_folder for this process (released automatically if it dies); none on Windows."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(os.path.join(out_folder, LOCK_FILE), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Waiting for another process that is preprocessing unlabeled images into {out_folder} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: go on without
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_in_pool(pool, function, arg_list, desc: str, verbose: bool, on_result) -> None:
    """nnU-Net's DefaultPreprocessor.run pattern: async jobs, progress bar, dead-worker detection. A CPS4Error in
    a worker is raised here again as a plain CPS4Error (one line, no remote traceback)."""
    workers = list(pool._pool)
    results = [pool.apply_async(function, a) for a in arg_list]
    remaining = set(range(len(results)))
    with tqdm(total=len(results), desc=desc, disable=not verbose) as bar:
        while remaining:
            if not all(w.is_alive() for w in workers):
                raise RuntimeError("A preprocessing worker died (out of memory?). Try fewer processes (-np).")
            for i in sorted(i for i in remaining if results[i].ready()):
                try:
                    value = results[i].get()
                except CPS4Error as e:
                    raise CPS4Error(str(e)) from None
                remaining.discard(i)
                on_result(i, value)
                bar.update()
            sleep(0.05)


def preprocess_unlabeled(plans_manager, configuration_manager, configuration_name: str, dataset_json: dict,
                         raw_dataset_folder: str, preprocessed_dataset_folder_base: str,
                         num_processes: int = 2, verbose: bool = True) -> str:
    """Bring `<data_identifier>_unlabeled/` up to date with imagesUnlabeled/ and the plans; return its path.

    Only what the manifest says is missing, incomplete or stale is done: everything after a plans change,
    otherwise the added, edited (other size or mtime) or unfinished cases; removed cases are deleted from the
    output. The new or changed images are first all checked (`check_unlabeled_case`, against the labeled images
    in imagesTr), then preprocessed; see the module docstring for how interruptions are survived. Raw data is
    only read.
    """
    cases = collect_unlabeled_cases(raw_dataset_folder, dataset_json)
    out_folder = os.path.join(preprocessed_dataset_folder_base,
                              unlabeled_folder_name(configuration_manager.data_identifier))
    os.makedirs(out_folder, exist_ok=True)
    with _folder_lock(out_folder):
        return _preprocess_unlabeled_locked(cases, out_folder, plans_manager, configuration_manager,
                                            configuration_name, dataset_json, raw_dataset_folder, num_processes,
                                            verbose)


def _preprocess_unlabeled_locked(cases: Dict[str, List[str]], out_folder: str, plans_manager, configuration_manager,
                                 configuration_name: str, dataset_json: dict, raw_dataset_folder: str,
                                 num_processes: int, verbose: bool) -> str:
    manifest_path = os.path.join(out_folder, MANIFEST_FILE)
    fingerprint = plans_fingerprint(plans_manager, configuration_manager, dataset_json)
    stamps = {case: file_stamps(files) for case, files in cases.items()}

    old = _load_manifest(manifest_path)
    reference = old.get("labeled_reference")
    if old.get("version") != MANIFEST_VERSION or old.get("plans_fingerprint") != fingerprint:
        _clear_folder(out_folder)
        old = {}
    _remove_leftovers(out_folder, cases)
    old_cases = old.get("cases", {})
    done = {c: stamps[c] for c in cases if old_cases.get(c) == stamps[c] and _case_complete(out_folder, c)}
    todo = [c for c in cases if c not in done]

    def manifest():
        return {"version": MANIFEST_VERSION, "configuration": configuration_name,
                "plans_name": plans_manager.plans_name, "plans_fingerprint": fingerprint,
                "raw_folder": os.path.join(raw_dataset_folder, UNLABELED_FOLDER),
                "labeled_reference": reference, "cases": dict(done)}

    # the cases to redo lose their entry before any of their files is touched
    if manifest() != old:
        _write_json_atomic(manifest_path, manifest())
    if not todo:
        if verbose:
            print(f"Unlabeled images up to date: {len(cases)} case(s) in {out_folder}")
        return out_folder

    reader_class = plans_manager.image_reader_writer_class
    reference = labeled_geometry_reference(raw_dataset_folder, dataset_json, reader_class, cached=reference)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    check_args = [(cases[c], reader_class, reference) for c in todo]
    preprocess_args = [(preprocessor, out_folder, c, cases[c], plans_manager, configuration_manager, dataset_json)
                       for c in todo]
    check_desc = f"Checking {len(todo)} new or changed unlabeled case(s)"
    desc = f"Preprocessing {len(todo)} unlabeled case(s) ({configuration_name})"
    last_write = monotonic()

    def install(i: int, tmp: str) -> None:
        nonlocal last_write
        _install_case(out_folder, todo[i], tmp)
        done[todo[i]] = stamps[todo[i]]
        if monotonic() - last_write >= MANIFEST_WRITE_INTERVAL_S:
            _write_json_atomic(manifest_path, manifest())
            last_write = monotonic()

    try:
        if num_processes <= 1:
            for a in tqdm(check_args, desc=check_desc, disable=not verbose):
                check_unlabeled_case(*a)
            for i, a in enumerate(tqdm(preprocess_args, desc=desc, disable=not verbose)):
                install(i, _preprocess_case_to_temp(*a))
        else:
            # every image is checked before any case is preprocessed
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(todo))) as pool:
                _run_in_pool(pool, check_unlabeled_case, check_args, check_desc, verbose, lambda i, r: None)
                _run_in_pool(pool, _preprocess_case_to_temp, preprocess_args, desc, verbose, install)
    finally:
        # what finished stays done, also when a later case failed or the run was interrupted
        _write_json_atomic(manifest_path, manifest())
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


def build_unlabeled_dataloader(folder: str, dataset_class, batch_size: int, initial_patch_size, patch_size,
                               label_manager, transforms, num_processes: int, pin_memory: bool,
                               maps_folder: Optional[str] = None):
    """nnU-Net's own data loader and augmenter over the preprocessed unlabeled cases.

    Never oversamples foreground (unlabeled cases have no class_locations) and samples patches uniformly.
    maps_folder: per-case maps in nnU-Net's previous-stage format (`vlm_map_cache`), appended by nnU-Net's loader
    as the last channel of each batch's "target", augmented with the image.
    """
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    dataset = dataset_class(folder, folder_with_segs_from_previous_stage=maps_folder)
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
