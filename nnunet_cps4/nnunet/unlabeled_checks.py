"""Content checks of unlabeled images, before they are preprocessed: what nnU-Net's
`--verify_dataset_integrity` checks for labeled cases, done for unlabeled ones.

Every new or changed image is read once with the plans' own reader and must be: readable and complete (not
truncated), non-empty, finite, of the labeled images' dimensionality and channels per file, with all channels of a
case on one voxel grid, and with spacing and orientation consistent with the labeled cases in imagesTr (rules in
`check_unlabeled_case`). Each failure is one CPS4Error naming the file and the fix.
"""
import gzip
import hashlib
import json
import os
from copy import deepcopy
from typing import List, Optional

import numpy as np

from nnunet_cps4.data.layout import UNLABELED_FOLDER
from nnunet_cps4.errors import CPS4Error

SPACING_FACTOR = 2.0  # unlabeled spacing must lie in [min / factor, max * factor] of the labeled spacings
DIRECTION_TOLERANCE_DEG = 30.0  # per axis, to the closest labeled orientation
REFERENCE_VERSION = 1


def file_stamps(files: List[str]) -> List[list]:
    """The per-file fingerprint kept in the manifest: [name, size, mtime_ns]."""
    stamps = []
    for f in files:
        st = os.stat(f)
        stamps.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return stamps


def error_summary(e: BaseException, limit: int = 300) -> str:
    """An exception as `Type: message` on one line (SimpleITK's messages span several), shortened."""
    text = f"{type(e).__name__}: {' '.join(str(e).split()) or 'no message'}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v) + 0.0:.4g}" for v in values) + ")"  # + 0.0: no "-0"


def _fmt_matrix(matrix) -> str:
    return "[" + ", ".join(_fmt(row) for row in np.asarray(matrix)) + "]"


# ---------------------------------------------------------------------------------------------------------------
# image checks


def _geometry_from_reader(shape, properties: dict) -> dict:
    """What the checks compare, from an nnU-Net reader's output: array shape (c, z, y, x) and properties.

    dims: 2 for nnU-Net's 2D convention (one slice and a fake first spacing of 999 x the largest real one, as
    SimpleITKIO and NaturalImage2DIO produce it), else 3. spacing and shape: the real axes, in nnU-Net's axis
    order. direction: the reader's direction cosines (columns = image axes) if it records any, else None.
    """
    spacing = [abs(float(s)) for s in properties["spacing"]]
    is_2d = shape[1] == 1 and len(spacing) == 3 and spacing[0] >= 999 * max(spacing[1:]) * (1 - 1e-6)
    direction = None
    if "sitk_stuff" in properties:
        d = np.asarray(properties["sitk_stuff"]["direction"], dtype=float)
        n = int(round(np.sqrt(d.size)))
        direction = d.reshape(n, n)
    elif "nibabel_stuff" in properties:
        stuff = properties["nibabel_stuff"]
        affine = np.asarray(stuff.get("reoriented_affine", stuff["original_affine"]), dtype=float)[:3, :3]
        direction = affine / np.maximum(np.linalg.norm(affine, axis=0, keepdims=True), 1e-12)
    return {"dims": 2 if is_2d else 3, "channels": int(shape[0]),
            "shape": [int(s) for s in shape[2:]] if is_2d else [int(s) for s in shape[1:]],
            "spacing": spacing[1:] if is_2d else spacing,
            "direction": None if direction is None else direction.tolist()}


def _header_geometry_sitk(path: str) -> dict:
    """The same as `_geometry_from_reader(*SimpleITKIO().read_images([path]))`, from the header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    dim, size = reader.GetDimension(), reader.GetSize()
    spatial = min(dim, 3)
    return {"dims": 2 if dim == 2 else 3,
            "channels": reader.GetNumberOfComponents() * (size[3] if dim == 4 else 1),
            "shape": [int(s) for s in size[:spatial][::-1]],
            "spacing": [abs(float(s)) for s in reader.GetSpacing()[:spatial][::-1]],
            "direction": np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim).tolist()}


def _labeled_geometry(path: str, reader_class) -> dict:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    if reader_class is SimpleITKIO:  # the usual case: header only, no need to read the voxels
        try:
            return _header_geometry_sitk(path)
        except RuntimeError:
            pass
    try:
        data, properties = reader_class().read_images([path])
    except Exception as e:
        raise CPS4Error(f"{path}: this labeled image could not be read by nnU-Net's {reader_class.__name__} "
                        f"({error_summary(e)}), but the unlabeled images are checked against the labeled ones. Fix: "
                        f"run nnUNetv2_plan_and_preprocess --verify_dataset_integrity and repair imagesTr") from None
    return _geometry_from_reader(data.shape, properties)


def labeled_geometry_reference(raw_dataset_folder: str, dataset_json: dict, reader_class,
                               cached: Optional[dict] = None) -> Optional[dict]:
    """Dimensionality, channels per file, spacing range and orientations of the labeled images (imagesTr).

    Returns `cached` unchanged when it was made from the same labeled files (name, size, mtime) with the same
    reader; None when there are no labeled images to compare with.
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    try:
        labeled = get_filenames_of_train_images_and_targets(raw_dataset_folder, deepcopy(dataset_json))
    except OSError:
        return None
    files = [[f for f in entry["images"] if os.path.isfile(f)] for _, entry in sorted(labeled.items())]
    files = [case_files for case_files in files if case_files]
    if not files:
        return None
    key = hashlib.sha256(json.dumps([REFERENCE_VERSION, reader_class.__name__,
                                     [file_stamps(case_files) for case_files in files]]).encode()).hexdigest()
    if cached is not None and cached.get("key") == key:
        return cached
    dims, channels_per_file, spacings, directions = set(), {}, {}, {}
    for case_files in files:
        for channel, f in enumerate(case_files):
            g = _labeled_geometry(f, reader_class)
            channels_per_file.setdefault(str(channel), set()).add(g["channels"])
            if channel == 0:
                dims.add(g["dims"])
                spacings.setdefault(str(g["dims"]), []).append(g["spacing"])
                if g["direction"] is not None:
                    rounded = np.round(np.asarray(g["direction"]), 4).tolist()
                    if rounded not in directions.setdefault(str(g["dims"]), []):
                        directions[str(g["dims"])].append(rounded)
    return {"key": key, "n_cases": len(files), "dims": sorted(dims),
            "channels_per_file": {c: sorted(v) for c, v in channels_per_file.items()},
            "spacing_range": {d: [np.min(s, axis=0).tolist(), np.max(s, axis=0).tolist()]
                              for d, s in spacings.items()},
            "directions": directions}


def _direction_matches(direction, reference_directions) -> bool:
    """Whether every axis of `direction` is within DIRECTION_TOLERANCE_DEG of that axis in one reference."""
    u = np.asarray(direction, dtype=float)
    for r in reference_directions:
        r = np.asarray(r, dtype=float)
        if r.shape != u.shape:
            continue
        cos = np.sum(u * r, axis=0) / np.maximum(np.linalg.norm(u, axis=0) * np.linalg.norm(r, axis=0), 1e-12)
        if np.all(cos >= np.cos(np.deg2rad(DIRECTION_TOLERANCE_DEG))):
            return True
    return False


def check_unlabeled_case(files: List[str], reader_class, reference: Optional[dict]) -> None:
    """Read every channel file of one unlabeled case with nnU-Net's reader and check its content.

    Raises CPS4Error (one message naming the file and the fix) when a file
    - cannot be read by the plans' reader (`reader_class`, the dataset's nnU-Net reader/writer), or is a
      truncated NIfTI file (which SimpleITK reads without error, filling the missing voxels with zeros),
    - is empty (a dimension of size 0),
    - holds a value that is not finite (NaN or inf: nnU-Net would turn the case into NaN training data),
    - holds another number of channels per file than the labeled images in imagesTr (normally 1),
    - has another dimensionality than the labeled images (a 2D image in a 3D dataset or vice versa),
    - has a spacing outside [smallest labeled spacing / 2, largest labeled spacing * 2] on any axis (the range is
      taken per axis, in nnU-Net's axis order, over all labeled cases),
    - has an orientation (direction cosines; only for readers that record them, e.g. SimpleITK and nibabel)
      where some image axis is more than 30 degrees away from that axis in every orientation found among the
      labeled images (a flipped or permuted axis is 180 or 90 degrees away; oblique tilts below 30 degrees pass),
    and, for a multi-channel case, when its channels do not share one voxel grid (shape, spacing, direction).
    `reference` is `labeled_geometry_reference(...)`; without one only the first three checks run. The checks
    see what the reader hands to preprocessing: e.g. SimpleITK reads NaN in a NIfTI file as 0 (no error then),
    while .mha/.nrrd keep NaN.
    """
    fix_remove = f"or remove the case from {UNLABELED_FOLDER}/"
    grids = []
    for channel, f in enumerate(files):
        try:
            data, properties = reader_class().read_images([f])
        except Exception as e:  # the readers raise all sorts of types for corrupt files
            raise CPS4Error(f"{f}: could not be read by nnU-Net's {reader_class.__name__} ({error_summary(e)}). "
                            f"Fix: replace it with a readable image {fix_remove}") from None
        incomplete = _incomplete_file(f)
        if incomplete:
            raise CPS4Error(f"{f}: could not be read completely, the file is truncated or corrupt ({incomplete}); "
                            f"nnU-Net's {reader_class.__name__} would fill the missing part with zeros. Fix: copy or "
                            f"export the image again {fix_remove}")
        if data.size == 0:
            raise CPS4Error(f"{f}: is empty (array shape {tuple(data.shape)}). Fix: replace it with a non-empty "
                            f"image {fix_remove}")
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            raise CPS4Error(f"{f}: contains {n_bad} non-finite value(s) (NaN or inf) among {data.size} voxels; "
                            f"nnU-Net would preprocess it into NaN training data. Fix: replace them with finite "
                            f"values (e.g. the image minimum) {fix_remove}")
        g = _geometry_from_reader(data.shape, properties)
        del data
        grids.append((f, g))
        if reference is None:
            continue
        n_labeled = reference["n_cases"]
        expected_channels = reference["channels_per_file"].get(str(channel))
        if expected_channels and g["channels"] not in expected_channels:
            raise CPS4Error(f"{f}: holds {g['channels']} channel(s), but the labeled images in imagesTr hold "
                            f"{expected_channels[0]} per file. Fix: store it like the labeled images, one file "
                            f"per dataset.json channel (<case>_0000, <case>_0001, ...) {fix_remove}")
        if g["dims"] not in reference["dims"]:
            labeled_dims = "/".join(f"{d}D" for d in reference["dims"])
            raise CPS4Error(f"{f}: is a {g['dims']}D image (shape {tuple(g['shape'])}), but the labeled images in "
                            f"imagesTr are {labeled_dims}; nnU-Net would resample it into a wrong volume. Fix: "
                            f"convert it to a {labeled_dims} image like the labeled ones {fix_remove}")
        lo, hi = reference["spacing_range"][str(g["dims"])]
        lo_ok, hi_ok = [v / SPACING_FACTOR for v in lo], [v * SPACING_FACTOR for v in hi]
        if len(g["spacing"]) != len(lo) or not all(a <= s <= b for s, a, b in zip(g["spacing"], lo_ok, hi_ok)):
            raise CPS4Error(f"{f}: spacing {_fmt(g['spacing'])} lies outside {_fmt(lo_ok)}..{_fmt(hi_ok)}, the "
                            f"range accepted per axis (half the smallest to twice the largest spacing of the "
                            f"{n_labeled} labeled case(s) in imagesTr, nnU-Net axis order). Fix: check its header "
                            f"(wrong unit or swapped axes?) and correct or resample it {fix_remove}")
        labeled_directions = reference["directions"].get(str(g["dims"]))
        if g["direction"] is not None and labeled_directions and \
                not _direction_matches(g["direction"], labeled_directions):
            more = f" and {len(labeled_directions) - 1} more" if len(labeled_directions) > 1 else ""
            raise CPS4Error(f"{f}: its orientation (direction {_fmt_matrix(g['direction'])}) differs by more than "
                            f"{DIRECTION_TOLERANCE_DEG:g} degrees on some axis from the labeled images in imagesTr "
                            f"(direction {_fmt_matrix(labeled_directions[0])}{more}). Fix: reorient it like the "
                            f"labeled images (e.g. SimpleITK DICOMOrient / resample) {fix_remove}")
    f0, g0 = grids[0]
    for f, g in grids[1:]:
        for what, same in (("shape", g["shape"] == g0["shape"]),
                           ("spacing", len(g["spacing"]) == len(g0["spacing"])
                            and np.allclose(g["spacing"], g0["spacing"], rtol=1e-4, atol=0)),
                           ("direction", g["direction"] is None or g0["direction"] is None
                            or np.allclose(g["direction"], g0["direction"], atol=1e-3))):
            if not same:
                value, value0 = (_fmt_matrix(g[what]), _fmt_matrix(g0[what])) if what == "direction" \
                    else (_fmt(g[what]), _fmt(g0[what]))
                raise CPS4Error(f"{f}: {what} {value} differs from channel 0 ({os.path.basename(f0)}: {value0}); "
                                f"all channels of a case must share one voxel grid. Fix: resample the channels onto "
                                f"one grid {fix_remove}")


def _incomplete_file(path: str) -> Optional[str]:
    """Why a NIfTI file is cut short, or None. SimpleITK reads the missing part of a truncated .nii/.nii.gz as
    zeros without any error, so the gzip stream is read to its end and an uncompressed .nii must be as long as
    its header says."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        elif path.endswith(".nii"):
            import nibabel

            header = nibabel.load(path).header
            needed = int(header.get_data_offset()) + \
                int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
            if os.path.getsize(path) < needed:
                return f"{os.path.getsize(path)} bytes, but its header needs {needed}"
    except Exception as e:  # EOFError, BadGzipFile, zlib.error, nibabel's errors
        return error_summary(e)
    return None
