"""The synthetic spine MR phantom: determinism, anatomy, dataset layout, console script and nnU-Net integrity."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cps4.data import phantom
from nnunet_cps4.data.layout import LUMBAR_LABELS, MRSPINESEG_LABELS, SPLIT_FILE, UNLABELED_FOLDER
from nnunet_cps4.errors import CPS4Error

SMALL = (5, 128, 48)
TINY = (3, 64, 24)
BIN = os.path.dirname(sys.executable)


def _script(name):
    path = os.path.join(BIN, name)
    if not os.path.isfile(path):
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return path


def _centroid_rows(label):
    """Mean row (SI axis, rows grow towards the feet) of every label id present."""
    rows = np.arange(label.shape[1])[None, :, None]
    out = {}
    for v in np.unique(label):
        if v:
            m = label == v
            out[int(v)] = float((rows * m).sum() / m.sum())
    return out


def test_same_arguments_give_identical_arrays():
    a_img, a_lab, a_info = phantom.make_case(3, 5, SMALL)
    b_img, b_lab, b_info = phantom.make_case(3, 5, SMALL)
    assert a_img.dtype == np.int16 and a_lab.dtype == np.uint8
    assert a_img.shape == a_lab.shape == SMALL
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert a_info == b_info
    c_img, _, _ = phantom.make_case(3, 6, SMALL)
    d_img, _, _ = phantom.make_case(4, 5, SMALL)
    assert c_img.tobytes() != a_img.tobytes() and d_img.tobytes() != a_img.tobytes()


def test_labels_are_mrspineseg_ids_in_anatomical_order():
    tops = set()
    for i in range(8):
        image, label, info = phantom.make_case(0, i, SMALL)
        present = set(int(v) for v in np.unique(label))
        assert present <= set(range(20))
        # sacrum, L5..T12 and the discs L5/S..T12/L1 are always in the field of view
        assert {1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16} <= present, (i, present)
        rows = _centroid_rows(label)
        vertebrae = [v for v in range(1, 11) if v in rows]          # S, L5, ..., T9
        # the sacrum lowest, then each vertebra above the one below it
        assert [rows[v] for v in vertebrae] == sorted((rows[v] for v in vertebrae), reverse=True)
        for k in range(9):                                          # disc 11+k lies between 2+k (above) and 1+k
            disc, above, below = 11 + k, 2 + k, 1 + k
            if disc in rows and above in rows and below in rows:
                assert rows[above] < rows[disc] < rows[below], (i, disc, rows)
        # the mid-sagittal slice cuts more vertebral body than the most lateral one
        body = (label >= 1) & (label <= 10)
        assert body[0].sum() < body[SMALL[0] // 2].sum()
        tops.add(info["top_level"])
        assert info["top_level"] == {v: k for k, v in MRSPINESEG_LABELS.items()}[max(v for v in vertebrae)]
    # the field of view varies: the top visible level is not always the same
    assert len(tops) >= 2 and tops <= {"T9", "T10", "T11", "T12"}


def test_lumbar_field_is_a_crop_of_the_same_subject_with_every_lumbar_level_whole():
    rows = phantom.field_size("lumbar", SMALL)[1]
    assert rows == round(phantom.LUMBAR_SI_MM / phantom.spacing_for(SMALL)[1]) < SMALL[1]
    to_lumbar = {MRSPINESEG_LABELS[n]: v for n, v in LUMBAR_LABELS.items()}
    for i in range(6):
        spine_img, spine_lab, _ = phantom.make_case(0, i, SMALL)
        img, lab, info = phantom.make_case(0, i, SMALL, "lumbar")
        assert img.shape == lab.shape == (SMALL[0], rows, SMALL[2]) and lab.dtype == np.uint8
        # the same rendered subject: the image is a window of rows of the whole-spine image
        first = next(r for r in range(SMALL[1] - rows + 1) if np.array_equal(spine_img[:, r:r + rows], img))
        window = spine_lab[:, first:first + rows]
        expected = np.vectorize(lambda v: to_lumbar.get(int(v), 0), otypes=[np.uint8])(window)
        assert np.array_equal(lab, expected)
        # L5..L1 and their discs are whole (none cut by the window); the sacrum is in view; T12 is unlabeled
        for name in ("L5", "L4", "L3", "L2", "L1", "L5/S", "L4/L5", "L3/L4", "L2/L3", "L1/L2"):
            assert (lab == LUMBAR_LABELS[name]).sum() == (spine_lab == MRSPINESEG_LABELS[name]).sum() > 0, (i, name)
        assert (lab == LUMBAR_LABELS["S"]).any()
        assert set(np.unique(lab)) <= set(LUMBAR_LABELS.values())
        # vertebrae from the sacrum (lowest, largest row) up to L1
        centre = _centroid_rows(lab)
        assert [centre[v] for v in range(1, 7)] == sorted((centre[v] for v in range(1, 7)), reverse=True)
        assert info["top_level"] == "L1"
    with pytest.raises(CPS4Error, match="--field 'thoracic'.*Fix"):
        phantom.make_case(0, 0, SMALL, "thoracic")


@pytest.mark.parametrize("text, fragment", [
    ("7x160", "not of the form"), ("axbxc", "not of the form"), ("2x160x64", "too few"),
    ("7x40x64", "too few"), ("7x160x10", "too few"), ("12x160x64", "thick"), ("7x5000x64", "more than"),
])
def test_bad_size_is_rejected_with_the_setting_named(text, fragment):
    with pytest.raises(CPS4Error) as e:
        phantom.parse_size(text)
    assert "--size" in str(e.value) and fragment in str(e.value) and "Fix" in str(e.value)


def test_good_sizes_and_spacing():
    assert phantom.parse_size("7x160x64") == (7, 160, 64)
    assert phantom.parse_size(" 5X128x48 ") == (5, 128, 48)
    assert phantom.spacing_for((7, 160, 64)) == (4.0, 2.5, 2.5)


def test_too_few_cases_for_the_split(nnunet_env):
    with pytest.raises(CPS4Error, match=r"-n 3 .*--test 3"):
        phantom.generate_phantom_dataset(20, n_cases=3, n_test=3, size=TINY)
    assert not os.listdir(nnunet_env["nnUNet_raw"])


def test_dataset_layout_json_and_split(nnunet_env, tmp_path):
    folder = phantom.generate_phantom_dataset(21, n_cases=8, labeled_fraction=0.3, n_test=2, seed=1, size=TINY)
    assert folder == os.path.join(nnunet_env["nnUNet_raw"], "Dataset021_SpinePhantom")
    with open(os.path.join(folder, "dataset.json")) as f:
        ds = json.load(f)
    with open(os.path.join(folder, SPLIT_FILE)) as f:
        split = json.load(f)
    assert ds["labels"] == MRSPINESEG_LABELS
    assert ds["channel_names"] == {"0": "T2"} and ds["file_ending"] == ".nii.gz"
    assert ds["numTraining"] == len(split["labeled"]) == 2
    assert ds["cps4"]["generator"] == phantom.GENERATOR
    assert ds["cps4"]["phantom"]["seed"] == 1 and ds["cps4"]["phantom"]["size"] == list(TINY)
    assert len(split["unlabeled"]) == 4 and len(split["test"]) == 2
    assert sorted(split["labeled"] + split["unlabeled"] + split["test"]) == [f"spine_{i:03d}" for i in range(8)]

    def files(sub):
        return sorted(os.listdir(os.path.join(folder, sub)))

    assert files("imagesTr") == [f"{c}_0000.nii.gz" for c in split["labeled"]]
    assert files("labelsTr") == [f"{c}.nii.gz" for c in split["labeled"]]
    assert files(UNLABELED_FOLDER) == [f"{c}_0000.nii.gz" for c in split["unlabeled"]]
    assert files(phantom.REFERENCE_FOLDER) == [f"{c}.nii.gz" for c in split["unlabeled"]]
    assert files("imagesTs") == [f"{c}_0000.nii.gz" for c in split["test"]]
    assert files("labelsTs") == [f"{c}.nii.gz" for c in split["test"]]
    assert set(split["cases"]) == set(f"spine_{i:03d}" for i in range(8))

    case = split["labeled"][0]
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
    lab = sitk.ReadImage(os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    assert np.allclose(img.GetSpacing()[::-1], phantom.spacing_for(TINY))
    assert img.GetDirection() == lab.GetDirection() and img.GetSpacing() == lab.GetSpacing()
    assert sitk.GetArrayFromImage(lab).dtype == np.uint8
    # what is on disk is what make_case gives
    array, label, _ = phantom.make_case(1, int(case.split("_")[1]), TINY)
    assert np.array_equal(sitk.GetArrayFromImage(img), array)
    assert np.array_equal(sitk.GetArrayFromImage(lab), label)

    png = phantom.save_overview_png(folder, str(tmp_path / "overview.png"), n_cases=2)
    assert os.path.getsize(png) > 10000

    # the phantom's class prompts are the shipped MRSpineSeg ones, also after a re-split of the dataset
    from nnunet_cps4.data.split import split_labeled_dataset
    from nnunet_cps4.method.prompts import load_class_prompts
    assert load_class_prompts(ds, folder).source.endswith("mrspineseg.json")
    resplit = split_labeled_dataset(folder, 22, 0.5, seed=0)
    with open(os.path.join(resplit, "dataset.json")) as f:
        assert load_class_prompts(json.load(f), resplit).source.endswith("mrspineseg.json")


def test_lumbar_dataset_has_the_lumbar_labels_prompts_and_order(nnunet_env, tmp_path):
    folder = phantom.generate_phantom_dataset(25, n_cases=4, labeled_fraction=0.5, n_test=1, size=TINY,
                                              field="lumbar")
    with open(os.path.join(folder, "dataset.json")) as f:
        ds = json.load(f)
    assert ds["labels"] == LUMBAR_LABELS
    info = ds["cps4"]["phantom"]
    assert info["field"] == "lumbar" and info["grid"] == list(TINY)
    assert info["size"] == list(phantom.field_size("lumbar", TINY)) and info["fov_mm"][1] == phantom.LUMBAR_SI_MM
    from nnunet_cps4.method.prompts import load_class_prompts
    prompts = load_class_prompts(ds, folder)
    assert prompts.source.endswith("mrspineseg_lumbar.json")
    assert prompts.spine_order.sequence[0] == "S" and prompts.spine_order.sequence[-1] == "L1"
    png = phantom.save_overview_png(folder, str(tmp_path / "overview.png"), n_cases=2)
    assert os.path.getsize(png) > 10000


def _env(paths):
    env = dict(os.environ, **paths)
    env["nnUNet_n_proc_DA"] = "1"       # planning calls torch.set_num_threads(nnUNet_n_proc_DA)
    env["nnUNet_def_n_proc"] = "1"
    return env


def test_console_script_and_one_line_errors(nnunet_env):
    exe = _script("nnUNetv2_cps4_make_phantom")
    env = _env(nnunet_env)
    args = [exe, "-d", "22", "-n", "4", "--test", "1", "--size", "3x64x24"]
    ok = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert os.path.isfile(os.path.join(nnunet_env["nnUNet_raw"], "Dataset022_SpinePhantom", "dataset.json"))

    for bad, fragment in ((["-d", "23", "--size", "2x64x24"], "--size"),
                          (["-d", "23", "--size", "7-160-64"], "--size"),
                          (["-d", "23", "-n", "5", "--test", "10"], "-n 5"),
                          (args[1:], "already exists")):
        r = subprocess.run([exe] + bad, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (bad, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert not os.path.exists(os.path.join(nnunet_env["nnUNet_raw"], "Dataset023_SpinePhantom"))

    again = subprocess.run(args + ["--overwrite"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("field", ["spine", "lumbar"])
def test_nnunet_dataset_integrity_check_passes(nnunet_env, field):
    phantom.generate_phantom_dataset(24, n_cases=5, labeled_fraction=0.5, n_test=1, size=TINY, field=field)
    exe = _script("nnUNetv2_plan_and_preprocess")
    r = subprocess.run([exe, "-d", "24", "--verify_dataset_integrity", "-c", "2d", "-np", "1", "-npfp", "1"],
                       env=_env(nnunet_env), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plans_dir = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset024_SpinePhantom")
    with open(os.path.join(plans_dir, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    # the thick left-right axis stays first, so 2d trains on sagittal slices
    assert plans["transpose_forward"] == [0, 1, 2]
    # the 2d patch covers a whole slice (nnU-Net rounds it up to its pooling divisor)
    patch, rows, columns = plans["configurations"]["2d"]["patch_size"], *phantom.field_size(field, TINY)[1:]
    assert rows <= patch[0] < rows + 8 and columns <= patch[1] < columns + 8
