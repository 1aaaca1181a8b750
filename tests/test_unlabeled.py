"""Unlabeled images: layout checks, preprocessing with the plans' preprocessor, the manifest, the loader."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.nnunet.unlabeled import (MANIFEST_FILE, build_unlabeled_dataloader, collect_unlabeled_cases,
                                   preprocess_unlabeled)
from toy_data import make_toy_dataset, write_image

BIN = os.path.dirname(sys.executable)


def snapshot(folder):
    """Every file under folder with size and mtime: raw data must never change."""
    result = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            result[p] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
    return result


@pytest.fixture(scope="module")
def planned(planned_toy):
    return planned_toy


@pytest.fixture
def dataset(planned, tmp_path, monkeypatch):
    """A private copy of the raw dataset plus the shared plans; outputs go to a private preprocessed base."""
    raw = tmp_path / "raw"
    shutil.copytree(planned["nnUNet_raw"], raw)
    pre = tmp_path / "pre" / "Dataset501_Toy"
    os.makedirs(pre)
    src_pre = os.path.join(planned["nnUNet_preprocessed"], "Dataset501_Toy")
    for f in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy(os.path.join(src_pre, f), pre / f)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    pm = PlansManager(str(pre / "nnUNetPlans.json"))
    with open(pre / "dataset.json") as f:
        dataset_json = json.load(f)

    class D:
        folder = str(raw / "Dataset501_Toy")
        unlabeled = os.path.join(folder, "imagesUnlabeled")
        preprocessed_base = str(pre)
        plans_manager = pm
        cm = pm.get_configuration("2d")
        djson = dataset_json

        def run(self, **kw):
            return preprocess_unlabeled(self.plans_manager, kw.pop("cm", self.cm), "2d", self.djson, self.folder,
                                        self.preprocessed_base, num_processes=kw.pop("np", 1), verbose=False)
    return D()


def test_preprocessed_next_to_labeled_folder_and_loadable(dataset):
    out = dataset.run()
    assert out == os.path.join(dataset.preprocessed_base, "nnUNetPlans_2d_unlabeled")
    cases = sorted(f[:-4] for f in os.listdir(out) if f.endswith(".pkl"))
    assert cases == ["u5", "u6", "u7", "u8"]
    props = load_pickle(os.path.join(out, "u5.pkl"))
    assert props["class_locations"] == {}
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    patch = dataset.cm.patch_size
    loader = build_unlabeled_dataloader(out, nnUNetDatasetBlosc2, 3, patch, patch,
                                        dataset.plans_manager.get_label_manager(dataset.djson), None, 0, False)
    batch = next(loader)
    assert tuple(batch["data"].shape) == (3, 1, *patch)
    assert set(batch["keys"]) <= set(cases)


def test_manifest_redoes_only_what_changed(dataset):
    out = dataset.run()
    stamp = lambda: {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if f.endswith(".b2nd")}
    first = stamp()
    dataset.run()
    assert stamp() == first, "an up-to-date folder must not be preprocessed again"

    # an added image: only it is preprocessed
    shutil.copy(os.path.join(dataset.unlabeled, "u5_0000.nii.gz"), os.path.join(dataset.unlabeled, "u9_0000.nii.gz"))
    dataset.run()
    second = stamp()
    assert {k: v for k, v in second.items() if not k.startswith("u9")} == first
    assert "u9.b2nd" in second
    # a removed image: its preprocessed files go too
    os.remove(os.path.join(dataset.unlabeled, "u6_0000.nii.gz"))
    dataset.run()
    assert not any(f.startswith("u6") for f in os.listdir(out))
    # changed plans (another target spacing): everything is redone
    cm = dataset.plans_manager.get_configuration("2d")
    cm.configuration["spacing"] = [s * 1.5 for s in cm.configuration["spacing"]]
    dataset.run(cm=cm)
    third = stamp()
    assert all(third[k] != second[k] for k in third if k in second)
    with open(os.path.join(out, MANIFEST_FILE)) as f:
        assert sorted(json.load(f)["cases"]) == ["u5", "u7", "u8", "u9"]


def _no_folder(d):
    shutil.rmtree(d.unlabeled)
    return "does not exist", d.unlabeled


def _empty_folder(d):
    for f in os.listdir(d.unlabeled):
        os.remove(os.path.join(d.unlabeled, f))
    return "is empty", d.unlabeled


def _wrong_ending(d):
    p = os.path.join(d.unlabeled, "u9_0000.nii")
    write_image(np.zeros((4, 32, 16), np.float32), p)
    return "file_ending", p


def _no_channel_suffix(d):
    p = os.path.join(d.unlabeled, "u9.nii.gz")
    shutil.copy(os.path.join(d.unlabeled, "u5_0000.nii.gz"), p)
    return "no channel suffix", p


def _extra_channel(d):
    p = os.path.join(d.unlabeled, "u5_0001.nii.gz")
    shutil.copy(os.path.join(d.unlabeled, "u5_0000.nii.gz"), p)
    return "channel 1", p


def _clash_with_labeled(d):
    p = os.path.join(d.unlabeled, "c0_0000.nii.gz")
    shutil.copy(os.path.join(d.unlabeled, "u5_0000.nii.gz"), p)
    return "also a labeled training case", p


def _corrupt_file(d):
    p = os.path.join(d.unlabeled, "u7_0000.nii.gz")
    with open(p, "wb") as f:
        f.write(b"\x1f\x8b this is not a NIfTI file")
    return "could not be read", p


def _four_d_file(d):
    import SimpleITK as sitk
    p = os.path.join(d.unlabeled, "u7_0000.nii.gz")
    volume = sitk.GetImageFromArray(np.zeros((4, 32, 16), np.float32))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), p)  # two channels stacked in one 4D file
    return "holds 2 channel(s)", p


BAD_INPUTS = [_no_folder, _empty_folder, _wrong_ending, _no_channel_suffix, _extra_channel, _clash_with_labeled,
              _corrupt_file, _four_d_file]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__.strip("_") for f in BAD_INPUTS])
def test_bad_input_is_named_and_raw_data_untouched(dataset, make_bad):
    expected, path = make_bad(dataset)
    before = snapshot(dataset.folder)
    with pytest.raises(CPS4Error) as info:
        dataset.run()
    message = str(info.value)
    assert expected in message and path in message and "Fix" in message
    assert snapshot(dataset.folder) == before


def test_missing_channel_in_multichannel_dataset(tmp_path):
    folder = make_toy_dataset(str(tmp_path), n_channels=2, n_labeled=1, n_unlabeled=2)
    os.remove(os.path.join(folder, "imagesUnlabeled", "u2_0001.nii.gz"))
    with open(os.path.join(folder, "dataset.json")) as f:
        djson = json.load(f)
    with pytest.raises(CPS4Error, match=r"u2.*lacks channel\(s\) \[1\].*u2_0001.nii.gz"):
        collect_unlabeled_cases(folder, djson)
    os.remove(os.path.join(folder, "imagesUnlabeled", "u2_0000.nii.gz"))
    assert list(collect_unlabeled_cases(folder, djson)) == ["u1"]
    assert [os.path.basename(f) for f in collect_unlabeled_cases(folder, djson)["u1"]] == \
        ["u1_0000.nii.gz", "u1_0001.nii.gz"]


def test_console_script(planned, tmp_path):
    env = dict(planned, nnUNet_preprocessed=str(tmp_path / "pre"))
    shutil.copytree(planned["nnUNet_preprocessed"], env["nnUNet_preprocessed"])
    ok = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_preprocess_unlabeled"), "-d", "501", "-c", "2d",
                         "-np", "2"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "nnUNetPlans_2d_unlabeled" in ok.stdout
    bad = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_preprocess_unlabeled"), "-d", "501", "-c", "3d_lowres"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: configuration '3d_lowres'")
