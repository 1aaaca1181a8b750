"""Unlabeled images: layout and content checks, preprocessing with the plans' preprocessor, the manifest, recovery
from interrupted runs, the loader."""
import hashlib
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
from nnunet_cps4.nnunet.unlabeled import (MANIFEST_FILE, TEMP_PREFIX, build_unlabeled_dataloader,
                                          collect_unlabeled_cases, preprocess_unlabeled)
from nnunet_cps4.nnunet.unlabeled_checks import check_unlabeled_case, labeled_geometry_reference
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


def _use_mha(d):
    """Turn the dataset copy into .mha: SimpleITK's NIfTI reader silently reads NaN as 0, .mha keeps NaN."""
    import SimpleITK as sitk
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        folder = os.path.join(d.folder, sub)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            sitk.WriteImage(sitk.ReadImage(path), path[:-len(".nii.gz")] + ".mha")
            os.remove(path)
    d.djson = dict(d.djson, file_ending=".mha")
    with open(os.path.join(d.folder, "dataset.json"), "w") as f:
        json.dump(d.djson, f)


def _nan_image(d):
    _use_mha(d)
    p = os.path.join(d.unlabeled, "u7_0000.mha")
    array = np.zeros((4, 32, 16), np.float32)
    array[1, 2, 3] = np.nan
    write_image(array, p)
    return "non-finite", p


def _two_d_image(d):
    import SimpleITK as sitk
    p = os.path.join(d.unlabeled, "u7_0000.nii.gz")
    image = sitk.GetImageFromArray(np.zeros((32, 16), np.float32))  # one slice, in a 3D dataset
    image.SetSpacing((1.0, 1.0))
    sitk.WriteImage(image, p)
    return "is a 2D image", p


def _flipped_direction(d):
    import SimpleITK as sitk
    p = os.path.join(d.unlabeled, "u7_0000.nii.gz")
    image = sitk.ReadImage(p)
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # the labeled images have identity
    sitk.WriteImage(image, p)
    return "orientation", p


def _spacing_out_of_range(d):
    p = os.path.join(d.unlabeled, "u7_0000.nii.gz")
    write_image(np.zeros((4, 32, 16), np.float32), p, spacing=(1.0, 1.0, 30.0))  # labeled: (1, 1, 3)
    return "spacing", p


def _truncated_file(d):
    p = os.path.join(d.unlabeled, "u7_0000.nii.gz")
    with open(p, "rb") as f:
        content = f.read()
    with open(p, "wb") as f:
        f.write(content[:len(content) // 2])  # an interrupted copy: SimpleITK reads it without error
    return "could not be read completely", p


def _seg_suffix_case(d):
    p = os.path.join(d.unlabeled, "u9_seg_0000.nii.gz")
    shutil.copy(os.path.join(d.unlabeled, "u5_0000.nii.gz"), p)
    return "_seg", p


BAD_INPUTS = [_no_folder, _empty_folder, _wrong_ending, _no_channel_suffix, _extra_channel, _clash_with_labeled,
              _corrupt_file, _truncated_file, _four_d_file, _nan_image, _two_d_image, _flipped_direction,
              _spacing_out_of_range, _seg_suffix_case]


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


def checksums(folder):
    """sha256 of every file under folder (by relative path): the raw data must never change."""
    result = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                result[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return result


def load_data(out, case):
    import blosc2
    return blosc2.open(os.path.join(out, case + ".b2nd"), mode="r")[:]


def manifest_cases(out):
    with open(os.path.join(out, MANIFEST_FILE)) as f:
        return json.load(f)["cases"]


def assert_complete(out, cases):
    """Every case complete and loadable, nothing temporary left, the manifest lists exactly these cases."""
    assert not [n for n in os.listdir(out) if n.startswith(TEMP_PREFIX)]
    assert sorted(manifest_cases(out)) == sorted(cases)
    for case in cases:
        assert np.isfinite(load_data(out, case)).all()
        assert load_pickle(os.path.join(out, case + ".pkl"))["class_locations"] == {}


@pytest.mark.parametrize("edit", ["rewrite", "touch"])
def test_edited_image_is_preprocessed_again(dataset, edit):
    out = dataset.run()
    path = os.path.join(dataset.unlabeled, "u5_0000.nii.gz")
    before, stamp_before = load_data(out, "u5"), os.stat(os.path.join(out, "u5.b2nd")).st_mtime_ns
    if edit == "rewrite":  # other content
        shutil.copyfile(os.path.join(dataset.unlabeled, "u6_0000.nii.gz"), path)
    else:  # same content, new mtime (touch)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    dataset.run()  # must not fail on the old outputs of u5
    assert os.stat(os.path.join(out, "u5.b2nd")).st_mtime_ns != stamp_before, "the edited case must be redone"
    after = load_data(out, "u5")
    if edit == "rewrite":
        assert not np.array_equal(after, before)
        np.testing.assert_array_equal(after, load_data(out, "u6"))
    else:
        np.testing.assert_array_equal(after, before)
    st = os.stat(path)
    assert manifest_cases(out)["u5"] == [["u5_0000.nii.gz", st.st_size, st.st_mtime_ns]]
    assert_complete(out, ["u5", "u6", "u7", "u8"])


def test_interrupted_run_is_completed_by_the_next(dataset, monkeypatch):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    original = DefaultPreprocessor.run_case_save

    def killed_while_writing_u7(self, output_truncated, *args, **kwargs):
        if os.path.basename(output_truncated) == "u7":
            with open(output_truncated + ".b2nd", "wb") as f:
                f.write(b"half a blosc2 file")
            raise KeyboardInterrupt  # like Ctrl-C or a kill in the middle of writing u7
        return original(self, output_truncated, *args, **kwargs)

    monkeypatch.setattr(DefaultPreprocessor, "run_case_save", killed_while_writing_u7)
    with pytest.raises(KeyboardInterrupt):
        dataset.run()
    monkeypatch.setattr(DefaultPreprocessor, "run_case_save", original)
    out = os.path.join(dataset.preprocessed_base, "nnUNetPlans_2d_unlabeled")
    assert sorted(manifest_cases(out)) == ["u5", "u6"], "only the cases finished before the kill count as done"
    assert not os.path.exists(os.path.join(out, "u7.b2nd"))
    u5_stamp = os.stat(os.path.join(out, "u5.b2nd")).st_mtime_ns
    dataset.run()
    assert_complete(out, ["u5", "u6", "u7", "u8"])
    assert os.stat(os.path.join(out, "u5.b2nd")).st_mtime_ns == u5_stamp, "finished cases are not redone"


def test_leftovers_of_a_killed_run_are_cleaned_up(dataset):
    out = dataset.run()
    # what a kill can leave: u6 no longer marked done but its old outputs still there, a half-written temporary
    # folder and manifest, and outputs of a case that has since been removed from imagesUnlabeled/
    with open(os.path.join(out, MANIFEST_FILE)) as f:
        manifest = json.load(f)
    del manifest["cases"]["u6"]
    with open(os.path.join(out, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f)
    os.makedirs(os.path.join(out, TEMP_PREFIX + "u6_abc"))
    with open(os.path.join(out, TEMP_PREFIX + "u6_abc", "u6.b2nd"), "wb") as f:
        f.write(b"half")
    with open(os.path.join(out, TEMP_PREFIX + MANIFEST_FILE), "w") as f:
        f.write('{"version": ')
    for suffix in (".b2nd", ".pkl"):
        shutil.copy(os.path.join(out, "u5" + suffix), os.path.join(out, "gone" + suffix))
    u6_stamp = os.stat(os.path.join(out, "u6.b2nd")).st_mtime_ns
    dataset.run()
    assert_complete(out, ["u5", "u6", "u7", "u8"])
    assert os.stat(os.path.join(out, "u6.b2nd")).st_mtime_ns != u6_stamp
    assert not any(n.startswith("gone") for n in os.listdir(out))


def test_corrupt_image_then_replaced_recovers(dataset):
    out = dataset.run()
    path = os.path.join(dataset.unlabeled, "u7_0000.nii.gz")
    with open(path, "rb") as f:
        good = f.read()
    expected = load_data(out, "u7")
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b this is not a NIfTI file")
    with pytest.raises(CPS4Error, match="could not be read") as info:
        dataset.run()
    assert path in str(info.value) and "\n" not in str(info.value)
    assert "u7" not in manifest_cases(out)
    with open(path, "wb") as f:
        f.write(good)
    dataset.run()
    assert_complete(out, ["u5", "u6", "u7", "u8"])
    np.testing.assert_array_equal(load_data(out, "u7"), expected)


def test_bad_image_found_before_preprocessing_with_workers(dataset):
    """With -np 2 the checks run in the workers; the error still comes out as the one CPS4Error, and before any
    case is preprocessed."""
    expected, path = _nan_image(dataset)
    with pytest.raises(CPS4Error) as info:
        dataset.run(np=2)
    message = str(info.value)
    assert expected in message and path in message and "Fix" in message and "\n" not in message
    out = os.path.join(dataset.preprocessed_base, "nnUNetPlans_2d_unlabeled")
    assert not [n for n in os.listdir(out) if n.endswith(".b2nd") or n.startswith(TEMP_PREFIX)]


def test_only_new_or_changed_images_are_read(dataset, monkeypatch):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    dataset.run()
    reads = []
    original = SimpleITKIO.read_images

    def counting(self, image_fnames, *args, **kwargs):
        reads.append([os.path.basename(f) for f in image_fnames])
        return original(self, image_fnames, *args, **kwargs)

    monkeypatch.setattr(SimpleITKIO, "read_images", counting)
    dataset.run()
    assert reads == []
    st = os.stat(os.path.join(dataset.unlabeled, "u6_0000.nii.gz"))
    os.utime(os.path.join(dataset.unlabeled, "u6_0000.nii.gz"), ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    dataset.run()
    assert reads == [["u6_0000.nii.gz"]] * 2, "the changed image: read once to check, once to preprocess"


def test_raw_data_checksums_unchanged(dataset):
    def run_and_compare(expect_error=None, np_=1):
        before = checksums(dataset.folder)
        if expect_error:
            with pytest.raises(CPS4Error, match=expect_error):
                dataset.run(np=np_)
        else:
            dataset.run(np=np_)
        assert checksums(dataset.folder) == before

    run_and_compare()
    u7, u8 = (os.path.join(dataset.unlabeled, f"u{i}_0000.nii.gz") for i in (7, 8))
    with open(u8, "rb") as f:
        good = f.read()
    st = os.stat(u7)
    os.utime(u7, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    run_and_compare(np_=2)
    _corrupt_file(dataset)
    run_and_compare("could not be read")
    shutil.copyfile(os.path.join(dataset.unlabeled, "u5_0000.nii.gz"), u7)
    _flipped_direction(dataset)
    run_and_compare("orientation", np_=2)
    shutil.copyfile(os.path.join(dataset.unlabeled, "u5_0000.nii.gz"), u7)
    with open(u8, "wb") as f:
        f.write(good[:len(good) // 2])  # a truncated file
    run_and_compare("could not be read completely")
    with open(u8, "wb") as f:
        f.write(good)
    run_and_compare()
    run_and_compare(np_=2)


def test_nan_image_with_nifti_reader_is_read_as_nnunet_reads_it(dataset):
    """The checks look at what nnU-Net's reader hands to preprocessing: SimpleITK reads NaN in NIfTI as 0."""
    array = np.zeros((4, 32, 16), np.float32)
    array[1, 2, 3] = np.nan
    write_image(array, os.path.join(dataset.unlabeled, "u7_0000.nii.gz"))
    out = dataset.run()
    assert np.isfinite(load_data(out, "u7")).all()


def test_multichannel_case_channels_share_one_grid(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    folder = make_toy_dataset(str(tmp_path), n_channels=2, n_labeled=2, n_unlabeled=1)
    with open(os.path.join(folder, "dataset.json")) as f:
        djson = json.load(f)
    reference = labeled_geometry_reference(folder, djson, SimpleITKIO)
    assert reference["dims"] == [3] and reference["channels_per_file"] == {"0": [1], "1": [1]}
    files = collect_unlabeled_cases(folder, djson)["u2"]
    check_unlabeled_case(files, SimpleITKIO, reference)
    write_image(np.zeros((4, 32, 16), np.float32), files[1], spacing=(1.0, 1.0, 2.5))
    with pytest.raises(CPS4Error) as info:
        check_unlabeled_case(files, SimpleITKIO, reference)
    message = str(info.value)
    assert files[1] in message and "spacing" in message and "differs from channel 0" in message and "Fix" in message


def test_header_geometry_matches_reader(tmp_path):
    """The labeled images are checked from their headers only; that must agree with nnU-Net's reader."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_cps4.nnunet.unlabeled_checks import _geometry_from_reader, _header_geometry_sitk
    three_d, two_d = str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")
    image = sitk.GetImageFromArray(np.zeros((4, 32, 16), np.float32))
    image.SetSpacing((0.5, 0.7, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, three_d)
    image = sitk.GetImageFromArray(np.zeros((32, 16), np.float32))
    image.SetSpacing((0.5, 0.7))
    sitk.WriteImage(image, two_d)
    for path, dims in ((three_d, 3), (two_d, 2)):
        from_header = _header_geometry_sitk(path)
        from_reader = _geometry_from_reader(*(lambda d, p: (d.shape, p))(*SimpleITKIO().read_images([path])))
        assert from_header["dims"] == from_reader["dims"] == dims
        for key in ("channels", "shape"):
            assert from_header[key] == from_reader[key]
        np.testing.assert_allclose(from_header["spacing"], from_reader["spacing"], rtol=1e-6)
        np.testing.assert_allclose(from_header["direction"], from_reader["direction"])


def test_stored_maps_travel_with_the_image_through_the_augmentation(dataset, tmp_path):
    """Per-case maps written in nnU-Net's previous-stage format (what CPS4 stores of a pretrained VLM) come back as
    the target's last channel, rotated, scaled and mirrored exactly like the image."""
    import torch
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnunet_cps4.nnunet.vlm_map_cache import decode_vote, encode_vote

    out = dataset.run()
    maps = str(tmp_path / "maps")
    os.makedirs(maps)
    cases = nnUNetDatasetBlosc2(out)
    for case in cases.identifiers:  # the map: "bright" pixels of the image itself (the toy's boxes)
        image = torch.from_numpy(np.asarray(cases.load_case(case)[0][:]))[0]
        bright = (image > 1.0).long()
        vote = torch.stack([1.0 - 0.3 * bright, 0.7 * bright.float()])
        nnUNetDatasetBlosc2.save_seg(encode_vote(bright, vote, 1), os.path.join(maps, case))
    patch = list(dataset.cm.patch_size)
    transforms = ComposeTransforms([
        SpatialTransform(patch, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=1.0, rotation=(-0.6, 0.6), p_scaling=1.0, scaling=(0.7, 1.4),
                         p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False, border_mode_seg="constant",
                         padding_value_seg=-1),
        MirrorTransform(allowed_axes=(0, 1)), RemoveLabelTansform(-1, 0)])
    label_manager = dataset.plans_manager.get_label_manager(dataset.djson)
    loader = build_unlabeled_dataloader(out, nnUNetDatasetBlosc2, 4, patch, patch, label_manager, transforms, 0,
                                        False, maps_folder=maps)
    agree, shifted = [], []
    for _ in range(5):
        batch = next(loader)
        assert batch["target"].shape[1] == 2  # nnU-Net's (empty) label channel, then the stored map
        y, vote = decode_vote(batch["target"][:, -1], 1)
        assert torch.allclose(vote[:, 1][y == 1], torch.tensor(0.7))  # the vote survives resampling exactly
        bright = batch["data"][:, 0] > 1.0
        agree.append((y.bool() == bright).float().mean().item())
        shifted.append((y.bool() == bright.roll(3, dims=-1)).float().mean().item())
    assert np.mean(agree) > 0.97 and np.mean(agree) > np.mean(shifted) + 0.03, (agree, shifted)
