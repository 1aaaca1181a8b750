"""nnUNetv2_cps4_benchmark end to end on a tiny phantom with the tick schedule (the real runs: docs/BENCHMARKS.md)."""
import json
import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def test_tiny_benchmark_end_to_end(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, nnUNet_def_n_proc="2")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        env.pop(var, None)  # the benchmark uses its own folders and finds its trainers itself
    run = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    summary = results["summary"]["0.5"]
    assert set(summary) == {"supervised", "vlm", "cps4", "offline_pseudo_labels"}
    for entry in summary.values():
        assert entry["seeds"] == 1 and len(entry["per_class_Dice"]) == 19
        assert entry["foreground_volume_ratio"][0] >= 0
    # CPS4's training signal is analysed on the unlabeled training cases: teacher, VLM map and refined label
    assert set(summary["cps4"]["pseudo_label_mean_Dice"]) == {"teacher", "text", "refined"}
    # ... and the stage-(i) VLM alone on the same cases (what it would bring to stage (ii))
    assert set(summary["vlm"]["pseudo_label_mean_Dice"]) == {"text"}
    # every method saw the same labeled cases, batch size and plans
    only_run = results["runs"][0]
    assert only_run["plans"] == "nnUNetPlans_bs2"
    with open(out / "splits" / "fraction_0.5_seed_0.json") as f:
        split = json.load(f)
    assert len(split["labeled"]) == 3 and len(split["unlabeled"]) == 3 and len(split["test"]) == 2
    # test cases never reach a training folder
    raw = out / "nnUNet_raw" / only_run["dataset"]
    trained_on = os.listdir(raw / "imagesTr") + os.listdir(raw / "imagesUnlabeled")
    assert not any(case in f for case in split["test"] for f in trained_on)
    # the benchmark trains fold 'all' and scores its own test cases: nnU-Net's final validation of fold 'all' (every
    # training case predicted) is skipped
    fold_all = out / "nnUNet_results" / only_run["dataset"] / "nnUNetTrainerSupervised_tick__nnUNetPlans_bs2__2d" / \
        "fold_all"
    assert (fold_all / "checkpoint_final.pth").is_file() and not (fold_all / "validation").exists()
    assert any("Final validation skipped" in log.read_text() for log in fold_all.glob("training_log_*.txt"))
    cost = {r["trainer"]: r for r in results["cost"]["results"]}
    assert cost["nnUNetTrainerSupervised_tick"]["time_ratio"] == 1.0
    assert cost["nnUNetTrainerCPS4_tick"]["seconds_per_iteration"] > 0
    md = (out / "results.md").read_text()
    assert "| cps4 |" in md and "foreground volume" in md and "vs supervised" in md and "Per-iteration cost" in md
    assert (out / "results.png").stat().st_size > 10000
    assert (out / "results_cases.png").stat().st_size > 10000

    assert summary["cps4"]["pseudo_label_volume_ratio"]["teacher"][0] > 0
    # the phantom's prompt file declares a spine order: each source is also scored after ordering its levels
    ordered = summary["cps4"]["pseudo_label_spine_order"]
    assert set(ordered) == {"teacher", "text", "refined"}
    for when in ("before", "after"):
        assert 0.0 <= ordered["teacher"][when]["every_level_placed"][0] <= 1.0
        assert 0.0 <= ordered["teacher"][when]["mean_Dice"][0] <= 1.0
    assert set(summary["supervised"]["pseudo_label_spine_order"]) == {"teacher"}
    assert "cases with every level placed" in md
    # ... and so is every method's test prediction (the phantom's test labels, spine order of its prompt file)
    for entry in summary.values():
        assert 0.0 <= entry["every_level_placed"][0] <= 1.0
    assert "test cases with every level placed (%)" in md
    # ... and post-processed by nnUNetv2_cps4_order_levels: what spine ordering adds to each method
    for entry in summary.values():
        assert 0.0 <= entry["after_ordering"]["mean_Dice"][0] <= 1.0
        assert 0.0 <= entry["after_ordering"]["every_level_placed"][0] <= 1.0
    assert len(os.listdir(out / "predictions_ordered" / "cps4" / "fraction_0.5_seed_0")) == 2  # the test cases
    assert "Spine ordering as post-processing" in md

    # offline pseudo-labelling: stock nnU-Net retrained on the labeled cases plus the supervised model's
    # predictions of the unlabeled ones, with the split's own plans and the same schedule
    offline = next((out / "nnUNet_raw").glob("Dataset*_" + only_run["dataset"].split("_", 1)[1] + "_offlinePL"))
    assert json.loads((offline / "dataset.json").read_text())["numTraining"] == 6
    assert sorted(os.listdir(offline / "labelsTr")) == sorted(f"{c}.nii.gz" for c in split["labeled"] +
                                                              split["unlabeled"])
    model = only_run["methods"]["offline_pseudo_labels"]["trainer"]
    assert model == "nnUNetTrainerSupervised_tick"
    plans = json.loads(next((out / "nnUNet_preprocessed").glob(offline.name + "/nnUNetPlans_bs2.json")).read_text())
    assert plans["configurations"]["2d"]["batch_size"] == 2

    # a rerun under the same protocol reuses what is done (and completes metrics written by older versions);
    # another protocol is refused
    cached = out / "predictions" / "cps4" / "fraction_0.5_seed_0" / "metrics.json"
    old = json.loads(cached.read_text())
    del old["pseudo_labels"]["foreground_volume_ratio"], old["pseudo_labels"]["spine_order"]
    del old["every_level_placed"], old["after_ordering"]
    cached.write_text(json.dumps(old))
    again = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--out", str(out),
                            "--no-cost", "--report", "again"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "training nnUNetTrainer" not in again.stdout
    completed = json.loads(cached.read_text())
    assert {"foreground_volume_ratio", "spine_order"} <= set(completed["pseudo_labels"])
    assert set(completed["every_level_placed"]["cases"]) == set(split["test"])
    assert 0.0 <= completed["after_ordering"]["mean"]["Dice"] <= 1.0
    # --repeats: supervised nnU-Net trained once more on the same split, in a results folder of its own; the split's
    # value is the mean of its two trainings and the report gives their spread
    repeated = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--out", str(out),
                               "--methods", "supervised", "--repeats", "2", "--no-cost", "--report", "repeated"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert repeated.returncode == 0, repeated.stdout[-3000:] + repeated.stderr[-3000:]
    assert repeated.stdout.count("training nnUNetTrainer") == 1  # repeat 0 is the run above
    assert list((out / "nnUNet_results_repeat1" / only_run["dataset"]).glob("nnUNetTrainerSupervised_tick__*"))
    rep = json.loads((out / "repeated.json").read_text())
    trainings = [json.loads((out / "predictions" / "supervised" / key / "metrics.json").read_text())["mean"]["Dice"]
                 for key in ("fraction_0.5_seed_0", "fraction_0.5_seed_0_repeat1")]
    entry = rep["summary"]["0.5"]["supervised"]
    assert entry["seeds"] == 1 and entry["trainings"] == 2
    assert abs(entry["mean_Dice"][0] - sum(trainings) / 2) < 1e-9
    assert abs(entry["run_to_run_sd_Dice"] - abs(trainings[0] - trainings[1]) / 2 ** 0.5) < 1e-9
    assert "run to run" in (out / "repeated.md").read_text()
    refused = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--out", str(out),
                              "--schedule", "5epochs"], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "another protocol" in refused.stderr and "schedule" in refused.stderr


def test_foreground_volume_ratio_counts_any_foreground_label(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from nnunet_cps4.experiments.evaluation import foreground_volume_ratio

    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, :2, :2] = 1                              # 4 foreground voxels
    under, over = np.zeros_like(ref), np.zeros_like(ref)
    under[0, 0, 0] = 2                              # 1 voxel, another class: still foreground
    over[0] = 3                                     # 16 voxels
    for folder, arrays in (("ref", {"a": ref, "b": ref}), ("pred", {"a": under, "b": over})):
        os.makedirs(tmp_path / folder)
        for case, array in arrays.items():
            sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / folder / f"{case}.nii.gz"))
    result = foreground_volume_ratio(str(tmp_path / "pred"), str(tmp_path / "ref"), ["a", "b"])
    assert result["cases"] == {"a": 0.25, "b": 4.0} and result["median"] == 2.125


def test_every_level_placed_reads_each_test_case_against_its_reference(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from nnunet_cps4.data.layout import MRSPINESEG_LABELS
    from nnunet_cps4.experiments.evaluation import evaluate_folder, every_level_placed
    from nnunet_cps4.method.prompts import load_shipped_prompts
    from nnunet_cps4.method.spine_order import LevelOrder

    order = LevelOrder.from_prompts(load_shipped_prompts("mrspineseg", {"labels": MRSPINESEG_LABELS}))
    l4, l5 = MRSPINESEG_LABELS["L4"], MRSPINESEG_LABELS["L5"]
    ref = np.zeros((1, 20, 6), np.uint8)
    ref[0, 2:6, 1:5], ref[0, 10:14, 1:5] = l4, l5
    swapped = np.where(ref == l4, l5, np.where(ref == l5, l4, 0)).astype(np.uint8)
    missing = np.where(ref == l5, 0, ref).astype(np.uint8)
    for folder, arrays in (("ref", {"a": ref, "b": ref, "c": ref}), ("pred", {"a": ref, "b": swapped, "c": missing})):
        os.makedirs(tmp_path / folder)
        for case, array in arrays.items():
            sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / folder / f"{case}.nii.gz"))
    result = every_level_placed(str(tmp_path / "pred"), str(tmp_path / "ref"), ["a", "b", "c"], order)
    assert result["cases"] == {"a": True, "b": False, "c": False} and abs(result["fraction"] - 1 / 3) < 1e-9
    labels = {"L4": l4, "L5": l5}
    assert evaluate_folder(str(tmp_path / "pred"), str(tmp_path / "ref"), labels, order=order)[
        "every_level_placed"] == result
    assert "every_level_placed" not in evaluate_folder(str(tmp_path / "pred"), str(tmp_path / "ref"), labels)


def _fake_metrics(dice):
    return {"mean": {"Dice": dice, "IoU": dice / 2, "HD95": 10.0}, "foreground_volume_ratio": {"median": 1.0},
            "per_class": {"L4": {"Dice": dice}}}


def test_summary_pairs_each_method_with_supervised_on_its_own_split():
    from nnunet_cps4.experiments.report import fmt_mean_sd, summarize

    # the split moves both methods together: the paired difference is steady although both means spread
    runs = [{"fraction": 0.05, "seed": s, "methods": {"supervised": _fake_metrics(base),
                                                      "meanteacher": _fake_metrics(base + 0.04)}}
            for s, base in enumerate((0.2, 0.4, 0.6))]
    runs.append({"fraction": 0.05, "seed": 3, "methods": {"meanteacher": _fake_metrics(0.9)}})  # no baseline
    summary = summarize(runs, ["supervised", "meanteacher"], ["L4"])["0.05"]
    assert summary["meanteacher"]["seeds"] == 4
    diff_mean, diff_sd = summary["meanteacher"]["paired_Dice_vs_supervised"]
    assert abs(diff_mean - 0.04) < 1e-9 and diff_sd < 1e-9          # the seed without a baseline is not paired
    assert abs(summary["supervised"]["mean_Dice"][1] - 0.2) < 1e-9    # sample sd (ddof 1) of 0.2, 0.4, 0.6
    one_seed = summarize(runs[:1], ["supervised"], ["L4"])["0.05"]["supervised"]
    assert fmt_mean_sd(one_seed["mean_Dice"]) == "20.0"               # one seed: no '± 0.0' pretending a spread


def test_repeated_trainings_are_averaged_within_their_split_before_the_spread_over_splits():
    from nnunet_cps4.experiments.report import summarize

    # two splits, each trained twice: the split is the unit of mean ± sd and of the pairing with supervised
    runs = [{"fraction": 0.05, "seed": s, "repeat": r,
             "methods": {"supervised": _fake_metrics(base + r * 0.02), "meanteacher": _fake_metrics(base + 0.1)}}
            for s, base in enumerate((0.3, 0.5)) for r in range(2)]
    summary = summarize(runs, ["supervised", "meanteacher"], ["L4"])["0.05"]
    sup, mt = summary["supervised"], summary["meanteacher"]
    assert sup["seeds"] == 2 and sup["trainings"] == 4
    assert abs(sup["mean_Dice"][0] - 0.41) < 1e-9 and abs(sup["mean_Dice"][1] - 0.2 / 2 ** 0.5) < 1e-9
    assert abs(sup["per_class_Dice"]["L4"][0] - 0.41) < 1e-9   # nested metrics averaged the same way
    assert abs(sup["run_to_run_sd_Dice"] - 0.02 / 2 ** 0.5) < 1e-9 and mt["run_to_run_sd_Dice"] < 1e-9
    diff_mean, diff_sd = mt["paired_Dice_vs_supervised"]
    assert abs(diff_mean - 0.09) < 1e-9 and diff_sd < 1e-9


def test_repeats_below_one_are_refused_with_the_fix():
    import pytest

    from nnunet_cps4.commands.benchmark import parse_args
    from nnunet_cps4.errors import CPS4Error

    with pytest.raises(CPS4Error, match="--repeats 0.*Fix: --repeats 1 or more"):
        parse_args(["--preset", "tiny", "--repeats", "0"])


def test_seed_record_keeps_every_seed_the_folder_has_run(tmp_path):
    from argparse import Namespace

    from nnunet_cps4.experiments.benchmark import record_seeds

    path = str(tmp_path / "seeds.json")
    record_seeds(path, Namespace(seeds=[0, 1], fractions=[0.05], phantom_seed=0))
    record_seeds(path, Namespace(seeds=[2], fractions=[0.1], phantom_seed=0))
    with open(path) as f:
        assert json.load(f) == {"seeds": [0, 1, 2], "fractions": [0.05, 0.1], "phantom_seed": 0}


def test_training_progress_is_one_line_per_epoch(capsys):
    from nnunet_cps4.experiments.benchmark import _EpochProgress

    progress = _EpochProgress("[f0.05 s0] cps4", epochs=4)
    log = ["No stage-(i) VLM in /x: training it now (nnUNetTrainerCPS4VLM_demo)", "2026-12-01 20:32:41.703784: ",
           "2026-12-01 20:32:41.703784: Epoch 0", "2026-12-01 20:32:41.9: Current learning rate: 0.01",
           "2026-12-01 20:33:07.6: train_loss 0.8123", "2026-12-01 20:33:07.6: Epoch time: 30.0 s",
           "Stage-(i) VLM loaded from /x/checkpoint_final.pth", "2026-12-01 20:40:00.0: Epoch 2",
           "2026-12-01 20:40:00.1: train_loss -0.1", "2026-12-01 20:40:30.0: Epoch time: 60.0 s"]
    for line in log:
        progress.feed(line + "\n")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["  [f0.05 s0] cps4 stage (i): epoch 1 of 4, train_loss 0.8123, 30.0 s/epoch, ~1.5 min left",
                     "  [f0.05 s0] cps4 stage (ii): epoch 3 of 4, train_loss -0.1, 60.0 s/epoch, ~1.0 min left"]


def test_protocol_of_an_older_folder_means_the_whole_spine_phantom(tmp_path):
    """A protocol.json written before --phantom-field existed was made on the whole-spine phantom: reruns with
    that field reuse the folder, a lumbar run is refused with the difference named."""
    import pytest

    from nnunet_cps4.commands.benchmark import parse_args
    from nnunet_cps4.errors import CPS4Error
    from nnunet_cps4.experiments.benchmark import PROTOCOL_KEYS, check_protocol

    spine = parse_args(["--preset", "demo", "--phantom-field", "spine", "--out", str(tmp_path)])
    old = {k: getattr(spine, k) for k in PROTOCOL_KEYS if k != "phantom_field"}
    (tmp_path / "protocol.json").write_text(json.dumps(old))
    check_protocol(str(tmp_path), {k: getattr(spine, k) for k in PROTOCOL_KEYS})
    lumbar = parse_args(["--preset", "demo", "--out", str(tmp_path)])  # the main job: the lumbar phantom
    assert lumbar.phantom_field == "lumbar" and lumbar.schedule == "demo"
    with pytest.raises(CPS4Error, match="phantom_field.*another --out folder"):
        check_protocol(str(tmp_path), {k: getattr(lumbar, k) for k in PROTOCOL_KEYS})
