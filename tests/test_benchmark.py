"""nnUNetv2_cps4_benchmark end to end on a tiny phantom with the smoke schedule (the real runs: docs/BENCHMARKS.md)."""
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
    assert set(summary) == {"supervised", "vlm", "cps4"}
    for entry in summary.values():
        assert entry["seeds"] == 1 and len(entry["per_class_Dice"]) == 19
    # CPS4's training signal is analysed on the unlabeled training cases: teacher, VLM map and refined label
    assert set(summary["cps4"]["pseudo_label_mean_Dice"]) == {"teacher", "text", "refined"}
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
    cost = {r["trainer"]: r for r in results["cost"]["results"]}
    assert cost["nnUNetTrainerSupervised_smoke"]["time_ratio"] == 1.0
    assert cost["nnUNetTrainerCPS4_smoke"]["seconds_per_iteration"] > 0
    md = (out / "results.md").read_text()
    assert "| cps4 |" in md and "vs supervised" in md and "Per-iteration cost" in md
    assert (out / "results.png").stat().st_size > 10000

    # a rerun under the same protocol reuses what is done; another protocol is refused
    again = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--out", str(out),
                            "--no-cost", "--report", "again"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "training nnUNetTrainer" not in again.stdout
    refused = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--out", str(out),
                              "--schedule", "5epochs"], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "another protocol" in refused.stderr and "schedule" in refused.stderr
