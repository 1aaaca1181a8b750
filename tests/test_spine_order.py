"""Spine-ordered level labels: order_levels on hand-made 2D/3D maps, levels_correctly_placed, and the
nnUNetv2_cps4_order_levels command on tiny NIfTI files."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cps4.data.layout import MRSPINESEG_LABELS as L
from nnunet_cps4.method.prompts import load_class_prompts
from nnunet_cps4.method.spine_order import LevelOrder, levels_correctly_placed, order_levels

BIN = os.path.dirname(sys.executable)
SEQUENCE = ["S", "L5/S", "L5", "L4/L5", "L4", "L3/L4", "L3", "L2/L3", "L2", "L1/L2", "L1", "T12/L1", "T12",
            "T11/T12", "T11", "T10/T11", "T10", "T9/T10", "T9"]
ORDER = LevelOrder(tuple(L[n] for n in SEQUENCE), frozenset(L[n] for n in SEQUENCE if "/" in n), L["S"])
NO_ANCHOR = LevelOrder(ORDER.labels, ORDER.discs, None)
HEIGHT = {"S": 12, "disc": 3, "vertebra": 6}


def spine_map(names, width=20):
    """A (SI, AP) slice: the structures of SEQUENCE from the bottom (S) upwards, slot k labelled names[k]
    (None: background), rows superior -> inferior as in the phantom; two background rows at the top."""
    heights = [HEIGHT["S"] if k == 0 else HEIGHT["disc" if k % 2 else "vertebra"] for k in range(len(names))]
    out = np.zeros((sum(heights) + 2, width), dtype=np.uint8)
    bottom = out.shape[0]
    for name, h in zip(names, heights):
        if name is not None:
            out[bottom - h:bottom, 4:16] = L[name]
        bottom -= h
    return out


def slot_rows(k, n):
    """Rows of slot k in a map of n slots (as spine_map lays them out)."""
    heights = [HEIGHT["S"] if j == 0 else HEIGHT["disc" if j % 2 else "vertebra"] for j in range(n)]
    top = sum(heights) + 2 - sum(heights[:k + 1])
    return slice(top, top + heights[k])


def swap(names, a, b):
    return [b if n == a else a if n == b else n for n in names]


TRUE = SEQUENCE[:13]  # S .. T12


def test_swapped_levels_corrected_2d():
    wrong = spine_map(swap(TRUE, "L3", "L4"))
    out, report = order_levels(wrong, ORDER)
    np.testing.assert_array_equal(out, spine_map(TRUE))
    assert sorted(report["relabelled"]) == sorted([(L["L3"], L["L4"]), (L["L4"], L["L3"])])
    assert report["anchor"] == {"label": L["S"], "rule": "anchor class"} and report["ignored"] == 0
    out, _ = order_levels(wrong[::-1], ORDER)  # upside down: the labels tell which end is caudal
    np.testing.assert_array_equal(out, spine_map(TRUE)[::-1])


def test_swapped_levels_corrected_3d_and_spine_axis():
    stack = lambda m: np.stack([m] * 3)  # noqa: E731  (LR, SI, AP): three sagittal slices
    wrong = stack(spine_map(swap(TRUE, "L1/L2", "L2/L3")))
    for axis in (None, -2):
        out, report = order_levels(wrong, ORDER, spine_axis=axis, spacing=(4.0, 1.0, 1.0))
        np.testing.assert_array_equal(out, stack(spine_map(TRUE)))
        assert report["components"] == 13


def test_levels_touching_where_a_disc_is_missing_in_one_slice_stay_apart():
    """Correct labels on thick sagittal slices: in a lateral slice the L4/L5 disc is missing, so L5 and L4 touch and
    (class-agnostic) form one component with the sacrum-side levels; labelled as two whole levels, they stay two."""
    mid = spine_map(TRUE)
    lateral = mid.copy()
    rows = slot_rows(SEQUENCE.index("L4/L5"), len(TRUE))
    lateral[rows] = np.where(lateral[rows] > 0, L["L5"], 0)       # the disc's place taken by L5 bone
    volume = np.stack([lateral, mid, mid])
    out, report = order_levels(volume, ORDER, spacing=(4.0, 1.0, 1.0), ignore_value=0)
    np.testing.assert_array_equal(out, volume)
    assert report["changed_voxels"] == 0 and report["anchor"]["label"] == L["S"]


def test_duplicated_level_becomes_its_neighbour():
    names = list(TRUE)
    names[6] = "L4"  # the L3 slot is labelled L4: L4 twice
    out, report = order_levels(spine_map(names), ORDER)
    np.testing.assert_array_equal(out, spine_map(TRUE))
    assert report["relabelled"] == [(L["L4"], L["L3"])]


def test_missing_levels_leave_their_positions_empty():
    """A missing vertebra (two discs in a row) or a missing disc-vertebra-disc run is counted from the gap, so the
    levels above keep their names; a plain alternation count would shift them by one or two."""
    for gap in ([6], [5, 6, 7]):
        names = [None if k in gap else n for k, n in enumerate(TRUE)]
        out, report = order_levels(spine_map(names), ORDER)
        np.testing.assert_array_equal(out, spine_map(names))
        assert report["relabelled"] == [] and report["placed"] == 13 - len(gap)


def test_split_vertebra_counts_once():
    """A vertebra cut in two by a background row counts as one level, whatever labels its pieces carry."""
    names = list(TRUE)
    names[8] = "L1"  # L2 slot predicted L1 ...
    wrong = spine_map(names)
    rows = slot_rows(8, len(TRUE))
    wrong[rows.start + 2, :] = 0  # ... and cut in two pieces
    wrong[rows.start:rows.start + 2][wrong[rows.start:rows.start + 2] > 0] = L["L3"]  # top piece says L3
    expected = spine_map(TRUE)
    expected[rows.start + 2, :] = 0
    out, report = order_levels(wrong, ORDER)
    np.testing.assert_array_equal(out, expected)
    assert report["components"] == 14 and report["structures"] == 13


def test_vertebra_split_left_right_in_3d_counts_once():
    vol = np.stack([spine_map(TRUE)] * 4)
    rows = slot_rows(4, len(TRUE))  # L4
    vol[2, rows] = 0  # sagittal slice 2 is empty there: the L4 pieces in slices 0-1 and 3 are not connected
    vol[3, rows][vol[3, rows] > 0] = L["L3"]  # and the lateral piece is labelled L3
    expected = vol.copy()
    expected[3, rows][expected[3, rows] > 0] = L["L4"]
    out, report = order_levels(vol, ORDER)
    np.testing.assert_array_equal(out, expected)
    assert report["structures"] == 13 and report["placed"] == 13


def test_right_labels_with_an_extra_piece_keep_their_levels():
    """Correct labels, but L3 is split by a disc-labelled sliver into two pieces that do not group into one
    structure: counting from the sacrum would move every level above L3 up by one. The alignment keeps the
    model's labels where they are in order; the upper L3 piece stays L3."""
    names = TRUE + [None, None]
    wrong = spine_map(names)
    rows = slot_rows(SEQUENCE.index("L3"), len(names))
    wrong[rows.start + 3, 4:16] = L["L2/L3"]  # a one-row stripe of disc label through the vertebra
    out, report = order_levels(wrong, ORDER, ignore_value=255)
    keep = np.ones(wrong.shape, bool)
    keep[rows.start + 3] = False
    np.testing.assert_array_equal(out[keep], wrong[keep])
    assert not set(np.unique(out[rows.start + 3]).tolist()) - {0, L["L3"], L["L2/L3"], 255}


def test_a_wrongly_labelled_blob_beside_a_disc_shifts_nothing():
    """A blob of vertebra size labelled L2 beside the L4/L5 disc (in the disc's rows) is not counted as a level:
    only the blob is relabelled or left out."""
    names = TRUE + [None, None]
    wrong = spine_map(names, width=30)
    rows = slot_rows(SEQUENCE.index("L4/L5"), len(names))
    wrong[rows, 17:27] = L["L2"]
    out, report = order_levels(wrong, ORDER, ignore_value=255)
    np.testing.assert_array_equal(out[:, :17], wrong[:, :17])
    assert set(np.unique(out[rows, 17:27]).tolist()) <= {L["L5"], L["L4"], 255}


def test_nothing_to_order_is_returned_unchanged():
    for m in (np.zeros((30, 20), np.uint8), np.full((4, 30, 20), 0, np.int16)):
        out, report = order_levels(m, ORDER, ignore_value=255 if m.dtype == np.uint8 else -1)
        np.testing.assert_array_equal(out, m)
        assert report["components"] == 0 and report["anchor"] is None
    other = np.zeros((30, 20), np.uint8)
    other[5:10, 5:10] = 42  # a class outside the order is never touched
    out, report = order_levels(other, ORDER, ignore_value=0)
    np.testing.assert_array_equal(out, other)


def test_anchor_fixes_an_off_by_one_shift():
    """Every level above the sacrum labelled one level too high: the sacrum anchors the count. Without an anchor
    the majority of the labels wins and the shift stays."""
    shifted = [TRUE[0]] + SEQUENCE[3:3 + len(TRUE) - 1]
    wrong = spine_map(shifted)
    out, report = order_levels(wrong, ORDER)
    np.testing.assert_array_equal(out, spine_map(TRUE))
    assert len(report["relabelled"]) == len(TRUE) - 1
    out, report = order_levels(wrong, NO_ANCHOR)
    expected = spine_map(shifted)
    expected[slot_rows(0, len(TRUE))][expected[slot_rows(0, len(TRUE))] > 0] = L["L5"]
    np.testing.assert_array_equal(out, expected)
    assert report["anchor"]["rule"] == "majority vote"


def test_a_blob_labelled_sacrum_above_the_spine_does_not_anchor_the_count():
    """Correct levels S .. T12 and a blob labelled S, larger than the sacrum, just above T12 (found in a mean
    teacher's test prediction): anchored there, every level below it was left out. It has no room for the sacrum's
    level, so the real sacrum anchors and the levels stay."""
    names = TRUE + [None] * 4
    wrong = spine_map(names)
    below = slice(slot_rows(len(TRUE) - 1, len(names)).start, None)  # the rows of S .. T12
    wrong[2:below.start - 2, 4:16] = L["S"]  # larger than the sacrum, two rows above T12
    out, report = order_levels(wrong, ORDER, ignore_value=255)
    np.testing.assert_array_equal(out[below], wrong[below])
    assert report["placed"] >= len(TRUE)  # anchored at the real sacrum, the only S with room for its level
    assert not (out[:below.start] == L["S"]).any()  # the blob is not the sacrum


def test_sacrum_in_two_pieces_is_one_anchor():
    wrong = spine_map(swap(TRUE, "L4", "L5"))
    sacrum = slot_rows(0, len(TRUE))
    wrong[sacrum.start + 5, :] = 0  # the sacrum cut in two pieces, too far apart to be halves of one level
    expected = spine_map(TRUE)
    expected[sacrum.start + 5, :] = 0
    out, report = order_levels(wrong, ORDER)
    np.testing.assert_array_equal(out, expected)
    assert report["components"] == 14 and report["placed"] == 13


def test_probabilities_anchor_at_the_most_confident_structure():
    """No sacrum: the structure with the highest mean probability of its class sets the count."""
    true = [None] * 6 + SEQUENCE[6:13]  # L3 .. T12
    shifted = [None] * 6 + SEQUENCE[8:15]  # all two positions too high ...
    shifted[10] = "L1"  # ... except the L1 slot, which is right
    wrong = spine_map(shifted)
    probabilities = np.full((20,) + wrong.shape, 0.5, np.float32)
    rows = slot_rows(10, len(true))
    probabilities[L["L1"], rows][wrong[rows] > 0] = 0.95
    out, report = order_levels(wrong, NO_ANCHOR, probabilities=probabilities)
    np.testing.assert_array_equal(out, spine_map(true))
    assert report["anchor"] == {"label": L["L1"], "rule": "most confident"}
    out, _ = order_levels(wrong, NO_ANCHOR)  # without probabilities the shifted majority wins
    assert (out == L["T11"]).any() and not (out == L["L3"]).any()


def test_ignore_value_for_levels_beyond_the_order_and_specks():
    names = SEQUENCE + ["T9/T10", "T9"]  # two structures above the last level of the order
    wrong = spine_map(names + [None])
    wrong[0, 0] = L["L2"]  # a speck
    out, report = order_levels(wrong, ORDER, ignore_value=255)
    expected = spine_map(SEQUENCE + [None, None, None])
    for k in (19, 20):
        expected[slot_rows(k, len(names) + 1)][wrong[slot_rows(k, len(names) + 1)] > 0] = 255
    expected[0, 0] = 255
    np.testing.assert_array_equal(out, expected)
    assert report["ignored"] == 3 and report["specks"] == 1
    out, report = order_levels(wrong, ORDER)  # ignore_value None: left as they were
    np.testing.assert_array_equal(out, wrong)
    assert report["ignored"] == 3 and report["changed_voxels"] == 0


def test_isolated_false_positive_is_not_counted():
    wrong = np.zeros((spine_map(TRUE).shape[0], 80), np.uint8)
    wrong[:, :20] = spine_map(TRUE)
    wrong[30:36, 40:52] = L["L3"]  # a vertebra-sized blob far in front of the spine
    out, report = order_levels(wrong, ORDER, ignore_value=0)
    np.testing.assert_array_equal(out[:, :20], spine_map(TRUE))
    assert not out[:, 20:].any() and report["ignored"] == 1


def test_fragments_are_placed_only_where_they_fit():
    n = len(TRUE) + 3
    # the top vertebra cut by the field of view: the lowest two rows of T11, labelled T9, above the T11/T12 disc
    m = spine_map(TRUE + ["T11/T12", None, None])
    t11 = slot_rows(14, n)
    m[t11.stop - 2:t11.stop, 4:16] = L["T9"]
    out, report = order_levels(m, ORDER, ignore_value=255)
    assert (out[t11.stop - 2:t11.stop, 4:16] == L["T11"]).all() and report["ignored"] == 0
    # a small piece of disc beside L3, not touching it: the L3 level is taken, no position fits
    m = spine_map(TRUE + [None, None, None], width=24)
    l3 = slot_rows(6, n)
    m[l3.start + 2:l3.start + 4, 17:20] = L["L3/L4"]
    out, report = order_levels(m, ORDER, ignore_value=255)
    assert (out[l3.start + 2:l3.start + 4, 17:20] == 255).all() and report["ignored"] == 1
    np.testing.assert_array_equal(out[:, :17], m[:, :17])


def test_a_very_fragmented_map_is_ordered_from_its_largest_pieces_in_bounded_time():
    """An untrained network's map: the levels (a swapped pair) beside thousands of one-voxel-sized pieces of level
    labels. Only the largest pieces are counted (without that cap this map took 23 s, a 3D one minutes), and the
    levels are still fixed."""
    import time

    rng = np.random.default_rng(0)
    wrong = np.zeros((spine_map(TRUE).shape[0], 120), np.uint8)
    wrong[:, :20] = spine_map(swap(TRUE, "L3", "L4"))
    noise = rng.integers(0, len(TRUE), size=(wrong.shape[0], 100))
    wrong[:, 20:] = np.array([0] + [L[n] for n in TRUE[1:]], np.uint8)[noise]
    start = time.perf_counter()
    out, report = order_levels(wrong, ORDER, ignore_value=255)
    assert time.perf_counter() - start < 8
    assert report["components"] > 5000 and report["ignored"] >= report["components"] - 4 * len(ORDER.labels)
    np.testing.assert_array_equal(out[:, :17], spine_map(TRUE)[:, :17])


def test_levels_correctly_placed():
    ref = spine_map(TRUE + [None, None])
    assert levels_correctly_placed(ref, ref, ORDER)
    assert not levels_correctly_placed(spine_map(swap(TRUE, "L3", "L4") + [None, None]), ref, ORDER)
    assert not levels_correctly_placed(spine_map([None if n == "L2" else n for n in TRUE] + [None, None]), ref, ORDER)
    shifted = spine_map([None, None] + SEQUENCE[:13])  # every level two slots too high
    assert not levels_correctly_placed(shifted, ref, ORDER)
    assert levels_correctly_placed(spine_map(SEQUENCE[:15]), ref, ORDER)  # extra levels in pred do not count
    assert levels_correctly_placed(np.zeros_like(ref), np.zeros_like(ref), ORDER)


def test_level_order_from_shipped_prompts_and_validation():
    prompts = load_class_prompts({"labels": dict(L), "cps4": {"prompt_file": "mrspineseg"}})
    assert LevelOrder.from_prompts(prompts) == ORDER
    assert LevelOrder.from_prompts(load_class_prompts({"labels": dict(L)})) is None
    with pytest.raises(ValueError, match="alternating"):
        LevelOrder((1, 2, 11), frozenset({11}), 1)


# ---------------------------------------------------------------- nnUNetv2_cps4_order_levels
def _dataset(raw, name="Dataset990_Order", cps4=None):
    folder = raw / name
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": dict(L), "numTraining": 1, "file_ending": ".nii.gz",
        "cps4": {"prompt_file": "mrspineseg"} if cps4 is None else cps4}))
    return folder


def _write(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 1.25, 4.0))
    image.SetOrigin((3.0, -7.0, 11.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def _run(env, *args):
    return subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_order_levels"), *args], env=env, capture_output=True,
                          text=True)


@pytest.fixture
def cli_env(nnunet_env, monkeypatch):
    monkeypatch.delenv("nnUNet_cps4_prompts", raising=False)
    return dict(os.environ)


def test_cli_fixes_a_swapped_pair_and_leaves_the_input_alone(cli_env, tmp_path):
    _dataset(tmp_path / "nnUNet_raw")
    pred, out = tmp_path / "pred", tmp_path / "out"
    pred.mkdir()
    volume = np.stack([spine_map(swap(TRUE, "L3", "L4"))] * 3)  # sitk array order; the spine runs along axis 1
    _write(pred / "case_001.nii.gz", volume)
    _write(pred / "case_002.nii.gz", np.stack([spine_map(TRUE)] * 3))
    (pred / "plans.json").write_text("{}")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pred.iterdir()}
    result = _run(cli_env, "-i", str(pred), "-o", str(out), "-d", "990")
    assert result.returncode == 0, result.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pred.iterdir()} == before
    fixed = sitk.ReadImage(str(out / "case_001.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed), np.stack([spine_map(TRUE)] * 3))
    assert fixed.GetSpacing() == (0.5, 1.25, 4.0) and fixed.GetOrigin() == (3.0, -7.0, 11.0)
    assert sorted(os.listdir(out)) == ["case_001.nii.gz", "case_002.nii.gz"]
    assert "case_001" in result.stdout and "L3 -> L4" in result.stdout and "case_002: unchanged" in result.stdout


@pytest.mark.parametrize("problem, expected", [
    ("corrupt", "cannot read"), ("same_folder", "must differ"), ("no_order", "spine_order"),
    ("missing_input", "does not exist")])
def test_cli_bad_input_is_one_line(cli_env, tmp_path, problem, expected):
    _dataset(tmp_path / "nnUNet_raw", cps4={} if problem == "no_order" else None)
    pred = tmp_path / "pred"
    pred.mkdir()
    _write(pred / "case_001.nii.gz", np.stack([spine_map(TRUE)] * 2))
    if problem == "corrupt":
        (pred / "case_002.nii.gz").write_text("not an image")
    before = {p.name: p.read_bytes() for p in pred.iterdir()}
    out = pred if problem == "same_folder" else tmp_path / "out"
    result = _run(cli_env, "-i", str(tmp_path / "absent" if problem == "missing_input" else pred), "-o", str(out),
                  "-d", "Dataset990_Order")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0] and "Fix" in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in pred.iterdir()} == before
