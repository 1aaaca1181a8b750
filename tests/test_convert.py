"""MRSpineSeg conversion, the general labeled-fraction splitter and the TPTBox/VerSe label helper.

Fake data: a few 5x32x16 volumes in the public MRSpineSeg layout, and a two-channel nnU-Net dataset. Real data:
the cervical T2w cut-out that the `tptbox` package ships (Apache-2.0), as an I/O and label-mapping test.
"""
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cps4.data.mrspineseg import check_image_mask_pair, convert_mrspineseg, find_mrspineseg_cases
from nnunet_cps4.data.split import resolve_n_test as _resolve_n_test
from nnunet_cps4.data.split import split_labeled_dataset
from nnunet_cps4.data.spine_labels import label_ids_in_files, remap_label_file, verse_label_names, verse_labels
from nnunet_cps4.data.layout import MRSPINESEG_LABELS, SPLIT_FILE, UNLABELED_FOLDER, case_identifiers
from nnunet_cps4.errors import CPS4Error

BIN = os.path.dirname(sys.executable)
SHAPE = (5, 32, 16)  # numpy order (z, y, x)
NUMBERS = (1, 2, 3, 5, 8, 13, 21, 34)
SPACING = (0.8, 0.8, 4.0)


def _write(array, path, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), useCompression=True)


def _make_mrspineseg(root, numbers=NUMBERS):
    rng = np.random.default_rng(0)
    (root / "train" / "MR").mkdir(parents=True)
    (root / "train" / "Mask").mkdir(parents=True)
    for n in numbers:
        _write(rng.integers(0, 1000, SHAPE).astype(np.int16), root / "train" / "MR" / f"Case{n}.nii.gz")
        _write(rng.integers(0, 20, SHAPE).astype(np.uint8), root / "train" / "Mask" / f"mask_case{n}.nii.gz")
    return root


def _snapshot(root):
    """{relative path: sha1} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _files(folder):
    return sorted(os.listdir(folder))


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def mrspineseg_template(tmp_path_factory):
    return _make_mrspineseg(tmp_path_factory.mktemp("mrspineseg"))


@pytest.fixture
def src(tmp_path, mrspineseg_template):
    """A private copy of the fake MRSpineSeg release (tests may break it)."""
    return shutil.copytree(mrspineseg_template, tmp_path / "MRSpineSeg")


# ------------------------------------------------------------------------------------------------ MRSpineSeg
def test_convert_mrspineseg_layout_and_dataset_json(nnunet_env, src):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    before = _snapshot(src)
    folder = convert_mrspineseg(str(src), 11, 0.5, n_test=2, seed=0)
    assert os.path.basename(folder) == "Dataset011_MRSpineSeg"
    assert _snapshot(src) == before  # the source is only read

    split = _load(os.path.join(folder, SPLIT_FILE))
    assert (len(split["test"]), len(split["labeled"]), len(split["unlabeled"])) == (2, 3, 3)
    assert sorted(split["test"] + split["labeled"] + split["unlabeled"]) == sorted(f"Case{n}" for n in NUMBERS)
    assert split["source"] == os.path.abspath(src) and split["seed"] == 0
    assert case_identifiers(os.path.join(folder, "imagesTr"), ".nii.gz") == split["labeled"]
    assert _files(os.path.join(folder, "labelsTr")) == sorted(f"{c}.nii.gz" for c in split["labeled"])
    assert case_identifiers(os.path.join(folder, UNLABELED_FOLDER), ".nii.gz") == split["unlabeled"]
    assert _files(os.path.join(folder, UNLABELED_FOLDER)) == sorted(f"{c}_0000.nii.gz" for c in split["unlabeled"])
    assert case_identifiers(os.path.join(folder, "imagesTs"), ".nii.gz") == split["test"]
    assert _files(os.path.join(folder, "labelsTs")) == sorted(f"{c}.nii.gz" for c in split["test"])

    case = split["labeled"][0]
    n = case[len("Case"):]
    for copied, original in ((f"imagesTr/{case}_0000.nii.gz", f"train/MR/Case{n}.nii.gz"),
                             (f"labelsTr/{case}.nii.gz", f"train/Mask/mask_case{n}.nii.gz")):
        with open(os.path.join(folder, copied), "rb") as a, open(src / original, "rb") as b:
            assert a.read() == b.read()

    dj = _load(os.path.join(folder, "dataset.json"))
    assert dj["labels"] == MRSPINESEG_LABELS
    assert dj["channel_names"] == {"0": "T2"}
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    assert dj["cps4"]["generator"] == "nnUNetv2_cps4_convert_mrspineseg"
    assert dj["cps4"]["unlabeled_folder"] == UNLABELED_FOLDER and dj["cps4"]["source"] == os.path.abspath(src)

    verify_dataset_integrity(folder, num_processes=1)  # nnU-Net's own check; raises on any problem


def test_split_reproducible_and_defaults(nnunet_env, src):
    splits = {}
    for dataset_id, seed in ((21, 0), (22, 0), (23, 1)):
        folder = convert_mrspineseg(str(src), dataset_id, 0.4, seed=seed)  # default --test: 20 % -> 2 of 8
        splits[dataset_id] = {k: v for k, v in _load(os.path.join(folder, SPLIT_FILE)).items()
                              if k in ("labeled", "unlabeled", "test")}
    assert splits[21] == splits[22]
    assert splits[21] != splits[23]
    assert [len(splits[21][k]) for k in ("test", "labeled", "unlabeled")] == [2, 2, 4]


def test_overwrite_only_with_flag(nnunet_env, src):
    folder = convert_mrspineseg(str(src), 31, 0.5, n_test=0)
    with pytest.raises(CPS4Error, match="already exists"):
        convert_mrspineseg(str(src), 31, 0.5, n_test=0)
    assert convert_mrspineseg(str(src), 31, 0.25, n_test=1, overwrite=True) == folder
    assert _load(os.path.join(folder, "dataset.json"))["numTraining"] == 2  # round(0.25 * 7)


def _garbage(path):
    path.write_bytes(b"this is not a nifti file" * 10)


BAD_INPUTS = {
    # name: (how to break the release, path relative to the release that the message must name, other text)
    "source_missing": (lambda r: shutil.rmtree(r), "", "does not exist"),
    "no_train_MR": (lambda r: shutil.rmtree(r / "train" / "MR"), "train/MR", "train/MR"),
    "image_without_mask": (lambda r: (r / "train/Mask/mask_case3.nii.gz").unlink(), "train/MR/Case3.nii.gz",
                           "has no mask"),
    "mask_without_image": (lambda r: (r / "train/MR/Case3.nii.gz").unlink(), "train/Mask/mask_case3.nii.gz",
                           "has no image"),
    "label_out_of_range": (lambda r: _write(np.full(SHAPE, 20, np.uint8), r / "train/Mask/mask_case5.nii.gz"),
                           "train/Mask/mask_case5.nii.gz", "20 outside 0..19"),
    "shape_mismatch": (lambda r: _write(np.zeros((5, 32, 15), np.uint8), r / "train/Mask/mask_case5.nii.gz"),
                       "train/Mask/mask_case5.nii.gz", "shape"),
    "spacing_mismatch": (lambda r: _write(np.zeros(SHAPE, np.uint8), r / "train/Mask/mask_case8.nii.gz",
                                          spacing=(0.8, 0.8, 3.0)), "train/Mask/mask_case8.nii.gz", "spacing"),
    "origin_mismatch": (lambda r: _write(np.zeros(SHAPE, np.uint8), r / "train/Mask/mask_case8.nii.gz",
                                         origin=(0.0, 0.0, 5.0)), "train/Mask/mask_case8.nii.gz", "origin"),
    "unreadable_image": (lambda r: _garbage(r / "train/MR/Case2.nii.gz"), "train/MR/Case2.nii.gz", "cannot read"),
    "unreadable_mask": (lambda r: _garbage(r / "train/Mask/mask_case2.nii.gz"), "train/Mask/mask_case2.nii.gz",
                        "cannot read"),
    "misnamed_file": (lambda r: shutil.copy(r / "train/MR/Case2.nii.gz", r / "train/MR/case_2b.nii.gz"),
                      "train/MR/case_2b.nii.gz", "unexpected file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_mrspineseg_input(nnunet_env, src, kind):
    breaker, named, text = BAD_INPUTS[kind]
    breaker(src)
    before = _snapshot(src) if os.path.isdir(src) else None
    with pytest.raises(CPS4Error) as err:
        convert_mrspineseg(str(src), 41, 0.5, n_test=1)
    message = str(err.value)
    assert os.path.normpath(os.path.join(str(src), named)) in message
    assert text in message and "Fix" in message and "\n" not in message
    assert os.listdir(nnunet_env["nnUNet_raw"]) == []  # nothing written before all checks pass
    if before is not None:
        assert _snapshot(src) == before


def test_check_pair_accepts_float_noise_in_header(tmp_path):
    image, mask = tmp_path / "Case1.nii.gz", tmp_path / "mask_case1.nii.gz"
    _write(np.zeros(SHAPE, np.int16), image, origin=(1.0, 2.0, 3.0))
    _write(np.ones(SHAPE, np.uint8), mask, origin=(1.0, 2.0, 3.0 + 1e-6))
    assert check_image_mask_pair(str(image), str(mask))["size"] == (16, 32, 5)


def test_find_cases_accepts_train_folder_and_sorts_numerically(src):
    cases = find_mrspineseg_cases(str(src / "train"))
    assert list(cases) == [f"Case{n}" for n in NUMBERS]
    assert cases["Case13"] == (str(src / "train/MR/Case13.nii.gz"), str(src / "train/Mask/mask_case13.nii.gz"))


def test_uncompressed_nifti_is_rewritten_as_nii_gz(nnunet_env, src):
    image = sitk.ReadImage(str(src / "train/MR/Case2.nii.gz"))
    (src / "train/MR/Case2.nii.gz").unlink()
    sitk.WriteImage(image, str(src / "train/MR/Case2.nii"))
    folder = convert_mrspineseg(str(src), 42, 1.0, n_test=0)
    copied = sitk.ReadImage(os.path.join(folder, "imagesTr", "Case2_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(copied), sitk.GetArrayFromImage(image))
    assert copied.GetSpacing() == image.GetSpacing()


def test_resolve_n_test():
    assert _resolve_n_test(None, 172) == 34
    assert _resolve_n_test(0, 10) == 0 and _resolve_n_test(3, 10) == 3
    assert _resolve_n_test(0.5, 10) == 5 and _resolve_n_test(0.9, 2) == 1 and _resolve_n_test(None, 1) == 0


# ------------------------------------------------------------------------------------------------ splitter
def _make_multichannel(raw, dataset_id=50, n_train=8, n_test=2):
    folder = raw / f"Dataset{dataset_id:03d}_Multi"
    rng = np.random.default_rng(1)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for prefix, n, images, labels in (("tr", n_train, "imagesTr", "labelsTr"), ("ts", n_test, "imagesTs", "labelsTs")):
        for i in range(n):
            case = f"{prefix}{i:02d}"
            for c in range(2):
                _write(rng.normal(size=SHAPE).astype(np.float32), folder / images / f"{case}_{c:04d}.nii.gz")
            _write(rng.integers(0, 3, SHAPE).astype(np.uint8), folder / labels / f"{case}.nii.gz")
    with open(folder / "dataset.json", "w") as f:
        json.dump({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2},
                   "numTraining": n_train, "file_ending": ".nii.gz", "licence": "CC-BY 4.0",
                   "citation": "Someone et al. 2024", "reference": "somewhere", "my_key": [1, 2]}, f)
    return folder


def test_split_multichannel_keeps_source_test_set(nnunet_env):
    source = _make_multichannel(pathlib.Path(nnunet_env["nnUNet_raw"]))
    before = _snapshot(source)
    folder = split_labeled_dataset("50", 51, 0.25, seed=3)
    assert _snapshot(source) == before
    assert os.path.basename(folder) == "Dataset051_Multi_25pctLabeled"
    split = _load(os.path.join(folder, SPLIT_FILE))
    assert split["test"] == ["ts00", "ts01"] and split["test_source"].startswith("imagesTs")
    assert (len(split["labeled"]), len(split["unlabeled"])) == (2, 6)
    for sub, cases in (("imagesTr", split["labeled"]), (UNLABELED_FOLDER, split["unlabeled"]),
                       ("imagesTs", split["test"])):
        assert _files(os.path.join(folder, sub)) == sorted(f"{c}_{k:04d}.nii.gz" for c in cases for k in (0, 1))
    assert _files(os.path.join(folder, "labelsTr")) == sorted(f"{c}.nii.gz" for c in split["labeled"])
    assert _files(os.path.join(folder, "labelsTs")) == ["ts00.nii.gz", "ts01.nii.gz"]
    dj = _load(os.path.join(folder, "dataset.json"))
    assert dj["numTraining"] == 2 and dj["channel_names"] == {"0": "T1", "1": "T2"}
    assert dj["labels"] == {"background": 0, "a": 1, "b": 2} and dj["file_ending"] == ".nii.gz"
    assert (dj["licence"], dj["citation"], dj["reference"], dj["my_key"]) == ("CC-BY 4.0", "Someone et al. 2024",
                                                                               "somewhere", [1, 2])
    assert dj["cps4"]["generator"] == "nnUNetv2_cps4_split_labeled" and dj["cps4"]["source"] == str(source)


def test_split_holds_out_when_test_given_and_checks_channels(nnunet_env):
    source = _make_multichannel(pathlib.Path(nnunet_env["nnUNet_raw"]))
    folder = split_labeled_dataset(str(source), 52, 0.5, n_test=3, seed=0, name="Held")
    split = _load(os.path.join(folder, SPLIT_FILE))
    assert (len(split["test"]), len(split["labeled"]), len(split["unlabeled"])) == (3, 2, 3)  # round(2.5) = 2
    assert all(c.startswith("tr") for c in split["test"])
    with pytest.raises(CPS4Error, match="would replace its source"):
        split_labeled_dataset("50", 50, 0.5, name="Multi")
    (source / "imagesTr" / "tr03_0001.nii.gz").unlink()
    with pytest.raises(CPS4Error, match=r"case tr03 in .*imagesTr has channels _0000"):
        split_labeled_dataset("50", 53, 0.5)
    (source / "labelsTr" / "tr04.nii.gz").unlink()
    shutil.copy(source / "imagesTr" / "tr03_0000.nii.gz", source / "imagesTr" / "tr03_0001.nii.gz")
    with pytest.raises(CPS4Error, match="tr04_0000.nii.gz has no label"):
        split_labeled_dataset("50", 53, 0.5)
    assert not any(d.startswith("Dataset053") for d in os.listdir(nnunet_env["nnUNet_raw"]))


# ------------------------------------------------------------------------------------------------ console scripts
def _run(*args):
    return subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def test_console_scripts(nnunet_env, src):
    ok = _run("nnUNetv2_cps4_convert_mrspineseg", str(src), "-d", "61", "--labeled-fraction", "0.25",
              "--test", "2", "--seed", "3")
    assert ok.returncode == 0, ok.stderr
    folder = os.path.join(nnunet_env["nnUNet_raw"], "Dataset061_MRSpineSeg")
    assert "wrote" in ok.stdout and _load(os.path.join(folder, "dataset.json"))["numTraining"] == 2

    bad = _run("nnUNetv2_cps4_convert_mrspineseg", str(src / "missing"), "-d", "62", "--labeled-fraction", "0.1")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(src / "missing") in lines[0]

    _make_multichannel(pathlib.Path(nnunet_env["nnUNet_raw"]))
    ok = _run("nnUNetv2_cps4_split_labeled", "Dataset050_Multi", "-d", "63", "--labeled-fraction", "0.5",
              "--test", "0.25", "--name", "Half")
    assert ok.returncode == 0, ok.stderr
    split = _load(os.path.join(nnunet_env["nnUNet_raw"], "Dataset063_Half", SPLIT_FILE))
    assert (len(split["test"]), len(split["labeled"]), len(split["unlabeled"])) == (2, 3, 3)

    bad = _run("nnUNetv2_cps4_split_labeled", "77", "-d", "64", "--labeled-fraction", "0.5")
    assert bad.returncode == 2 and bad.stderr.startswith("error: no dataset with id 77")


# ------------------------------------------------------------------------------------------------ TPTBox / VerSe
def test_verse_label_names():
    names = verse_label_names([0, 19, 20, 24, 26, 29, 119, 123, 124, 126, 219])
    assert names == {0: "background", 19: "T12", 20: "L1", 24: "L5", 26: "S", 29: "S", 119: "T12/L1",
                     123: "L4/L5", 124: "L5/S", 126: "S", 219: "T12"}
    names = verse_label_names([19, 28, 20, 24, 25, 119, 128, 124, 125, 26, 126, 29], sacrum="separate")
    assert (names[119], names[128], names[124], names[125], names[126]) == ("T12/T13", "T13/L1", "L5/L6", "L6/S1",
                                                                          "S1/S2")
    with pytest.raises(CPS4Error, match="rib of T5"):
        verse_label_names([12, 44])
    assert verse_label_names([12, 44], ribs="background")[44] == "background"
    with pytest.raises(CPS4Error, match="label id 99"):
        verse_label_names([99])
    labels, mapping = verse_labels([24, 26, 124, 23, 123, 224], endplates="separate")
    assert labels == {"background": 0, "L4": 1, "L5": 2, "S": 3, "L4/L5": 4, "L5/S": 5, "L5 endplate": 6}
    assert mapping == {0: 0, 23: 1, 24: 2, 26: 3, 123: 4, 124: 5, 224: 6}


def _tptbox_sample():
    spec = importlib.util.find_spec("TPTBox")  # locate the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tptbox is not installed (pip install tptbox)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "tests", "sample_mri")
    image = os.path.join(folder, "sub-mri_label-6_T2w.nii.gz")
    vert = os.path.join(folder, "sub-mri_seg-vert_label-6_msk.nii.gz")
    if not (os.path.isfile(image) and os.path.isfile(vert)):
        pytest.skip(f"tptbox sample MR not found in {folder}")
    return image, vert


def test_tptbox_real_mr_round_trip(nnunet_env):
    """Real cervical T2w cut-out with TPTBox vertebra/disc/endplate ids -> named labels -> semi-supervised dataset
    -> read back: names, ids, voxels and geometry survive. I/O only, no accuracy claim."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    image_path, vert_path = _tptbox_sample()
    ids = label_ids_in_files([vert_path])
    assert ids == [0, 5, 6, 7, 105, 106, 205, 206, 207]  # C5-C7, discs C5/C6 C6/C7, endplates of C5-C7
    labels, mapping = verse_labels(ids)
    assert labels == {"background": 0, "C5": 1, "C6": 2, "C7": 3, "C5/C6": 4, "C6/C7": 5}
    assert mapping == {0: 0, 5: 1, 6: 2, 7: 3, 105: 4, 106: 5, 205: 1, 206: 2, 207: 3}

    source = os.path.join(nnunet_env["nnUNet_raw"], "Dataset070_TPTBoxMR")
    cases = [f"tpt{i:02d}" for i in range(5)]  # the one real case under several ids, for the split
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(source, sub))
    for case in cases:
        shutil.copyfile(image_path, os.path.join(source, "imagesTr", f"{case}_0000.nii.gz"))
        remap_label_file(vert_path, os.path.join(source, "labelsTr", f"{case}.nii.gz"), mapping)
    generate_dataset_json(source, {0: "T2"}, labels, len(cases), ".nii.gz", dataset_name="Dataset070_TPTBoxMR")

    folder = split_labeled_dataset("70", 71, 0.5, n_test=1, seed=0)
    split = _load(os.path.join(folder, SPLIT_FILE))
    assert (len(split["test"]), len(split["labeled"]), len(split["unlabeled"])) == (1, 2, 2)
    assert _load(os.path.join(folder, "dataset.json"))["labels"] == labels

    original_image, original_vert = sitk.ReadImage(image_path), sitk.ReadImage(vert_path)
    geometry = lambda im: (im.GetSize(), im.GetSpacing(), im.GetOrigin(), im.GetDirection())
    vert = sitk.GetArrayFromImage(original_vert)
    expected = np.zeros_like(vert)
    for old, new in mapping.items():
        expected[vert == old] = new
    assert {n: int((expected == i).sum()) for n, i in labels.items() if i} == \
        {"C5": 4449 + 892, "C6": 15754 + 971, "C7": 12443 + 28, "C5/C6": 3829, "C6/C7": 4768}
    for label_file, image_file in ((f"labelsTr/{split['labeled'][0]}.nii.gz",
                                    f"imagesTr/{split['labeled'][0]}_0000.nii.gz"),
                                   (f"labelsTs/{split['test'][0]}.nii.gz", f"imagesTs/{split['test'][0]}_0000.nii.gz")):
        seg = sitk.ReadImage(os.path.join(folder, label_file))
        img = sitk.ReadImage(os.path.join(folder, image_file))
        assert geometry(seg) == geometry(original_vert) == geometry(img) == geometry(original_image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), expected)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(original_image))
    unlabeled = sitk.ReadImage(os.path.join(folder, UNLABELED_FOLDER, f"{split['unlabeled'][0]}_0000.nii.gz"))
    assert geometry(unlabeled) == geometry(original_image)

    verify_dataset_integrity(folder, num_processes=1)
