"""`nnUNetv2_cps4_benchmark`: CPS4 against supervised nnU-Net and the mean teacher, side by side, one protocol.

Protocol (DESIGN.md section 6), for each labeled fraction f and seed s:
1. A fully labeled source dataset with a fixed test set (default: a spine phantom made once per benchmark
   folder) is split by `split_labeled_dataset(source, fraction=f, seed=s)`: f of the training cases stay labeled,
   the rest go to imagesUnlabeled/; the test cases are the source's imagesTs/labelsTs, the same for every run.
   The split file is copied to splits/.
2. Stock `nnUNetv2_plan_and_preprocess` plans on the labeled cases; a copy of the plans with a fixed batch size
   (`--batch-size`, default 2) is used by every method, so methods and fractions share batch size and
   iterations. Unlabeled images are preprocessed once.
3. Every method trains with the same schedule (`<trainer>_<schedule>`), fold 'all' (all labeled cases; nothing is
   selected on validation: the final checkpoint is used).
4. Each model predicts imagesTs with the stock `nnUNetv2_predict` from checkpoint_final; the test labels are read
   only by the evaluation that follows (Dice, IoU, HD95 per class, `nnunet_cps4.experiments.evaluation`).
5. results.json, results.md (mean ± sd over seeds, per class and mean, with the supervised baseline), results.png,
   seeds.json, splits/, protocol.json and, once per benchmark, the per-iteration cost (`nnunet_cps4.experiments.cost`).
A benchmark folder remembers its protocol (protocol.json) and refuses to be reused under another one; within one
protocol a rerun skips what is done, so an interrupted benchmark continues where it stopped.
All nnU-Net folders live inside the benchmark folder: the user's nnUNet_raw/preprocessed/results are not touched.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.errors import CPS4Error

METHODS: Dict[str, str] = {
    "supervised": "nnUNetTrainerSupervised",
    "meanteacher": "nnUNetTrainerMeanTeacher",
    "meanteacher_hardDiceCE": "nnUNetTrainerMeanTeacher_hardDiceCE",
    "meanteacher_lowWeight": "nnUNetTrainerMeanTeacher_lowWeight",
    "meanteacher_warmup": "nnUNetTrainerMeanTeacher_warmup",
    "meanteacher_warmupDice": "nnUNetTrainerMeanTeacher_warmupDice",
    "cps4": "nnUNetTrainerCPS4",
    "cps4_noTokenLoss": "nnUNetTrainerCPS4_noTokenLoss",
    "cps4_noPixelLoss": "nnUNetTrainerCPS4_noPixelLoss",
    "cps4_randomText": "nnUNetTrainerCPS4_randomText",
    "cps4_textOnly": "nnUNetTrainerCPS4_textOnly",
    "cps4_hardDiceCE": "nnUNetTrainerCPS4_hardDiceCE",
    "cps4_vlmSegLoss": "nnUNetTrainerCPS4_vlmSegLoss",
    "cps4_lowWeight": "nnUNetTrainerCPS4_lowWeight",
    "cps4_warmup": "nnUNetTrainerCPS4_warmup",
    "cps4_warmupRefinedOnly": "nnUNetTrainerCPS4_warmupRefinedOnly",
    "cps4_warmupRefinedOnlyDice": "nnUNetTrainerCPS4_warmupRefinedOnlyDice",
    "cps4_warmupDiceVeto": "nnUNetTrainerCPS4_warmupDiceVeto",
    # the stage-(i) VLMs themselves: their fused maps as a segmentation (CPS4 reuses the same checkpoints)
    "vlm": "nnUNetTrainerCPS4VLM",
    "vlm_noTokenLoss": "nnUNetTrainerCPS4VLM_noTokenLoss",
    "vlm_noPixelLoss": "nnUNetTrainerCPS4VLM_noPixelLoss",
    "vlm_randomText": "nnUNetTrainerCPS4VLM_randomText",
    "vlm_segLoss": "nnUNetTrainerCPS4VLM_segLoss",
}
BASELINE = "supervised"

PRESETS: Dict[str, dict] = {
    # the README's main job: one seed, CPS4 beside supervised nnU-Net, <= 15 minutes on 2 CPU cores
    "demo": dict(fractions=[0.05], seeds=[0], methods=["supervised", "cps4"], schedule="demo", device="cpu",
                 phantom_cases=50, phantom_test=10, phantom_size="5x96x40", cost=False),
    # docs/BENCHMARKS.md on 2 CPU cores
    "cpu": dict(fractions=[0.05, 0.10], seeds=[0, 1, 2], methods=["supervised", "meanteacher", "vlm", "cps4"],
                schedule="cpu5k", device="cpu", phantom_cases=50, phantom_test=10, phantom_size="5x96x40",
                cost=True),
    # one H100/H200, about 10 minutes (sized by arithmetic from CPU timings, not yet run on a GPU)
    "gpu": dict(fractions=[0.05], seeds=[0, 1, 2], methods=["supervised", "meanteacher", "cps4"],
                schedule="cpu5k", device="cuda", phantom_cases=50, phantom_test=10, phantom_size="5x96x40",
                cost=True),
    # tests: tiny phantom, smoke schedule
    "tiny": dict(fractions=[0.5], seeds=[0], methods=["supervised", "vlm", "cps4"], schedule="smoke",
                 device="cpu", phantom_cases=8, phantom_test=2, phantom_size="4x80x32", cost=True),
}
PROTOCOL_KEYS = ("source", "phantom_cases", "phantom_test", "phantom_size", "phantom_seed", "schedule",
                 "configuration", "batch_size", "fold")
PHANTOM_ID = 700


def _bench_env(out: str, extra: Optional[dict] = None) -> dict:
    from nnunet_cps4.nnunet.discovery import ext_trainer_value

    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = os.path.join(out, var)
        os.makedirs(env[var], exist_ok=True)
    env.setdefault("nnUNet_def_n_proc", "2")
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer", ""))
    env.update(extra or {})
    return env


def _run(cmd: List[str], env: dict, log: str) -> float:
    """Run a console script, appending its output to `log`; return the wall time."""
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        result = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        seconds = time.time() - start
        f.write(f"# {os.path.basename(cmd[0])}: exit {result.returncode}, {seconds:.1f} s wall\n")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {result.returncode}); see {log}")
    return seconds


def _script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def check_protocol(out: str, protocol: dict) -> None:
    path = os.path.join(out, "protocol.json")
    if os.path.isfile(path):
        with open(path) as f:
            existing = json.load(f)
        diffs = {k: (existing.get(k), protocol.get(k)) for k in PROTOCOL_KEYS if existing.get(k) != protocol.get(k)}
        if diffs:
            raise CPS4Error(f"{out} holds a benchmark made under another protocol ({diffs}; existing, requested). "
                            f"Fix: use another --out folder, or the same settings")
    else:
        with open(path, "w") as f:
            json.dump(protocol, f, indent=2)


def prepare_source(out: str, args, env: dict, log: str) -> str:
    """The fully labeled source dataset with its fixed test set: the user's, or a phantom made once."""
    if args.source:
        from nnunet_cps4.data.convert import resolve_raw_dataset

        folder = resolve_raw_dataset(args.source) if not os.path.isdir(args.source) else args.source
        if not os.path.isdir(os.path.join(folder, "labelsTs")):
            raise CPS4Error(f"{folder} has no labelsTs/: the benchmark needs a fixed labeled test set. Fix: add "
                            f"imagesTs/ and labelsTs/ to the source dataset")
        return folder
    folder = os.path.join(env["nnUNet_raw"], f"Dataset{PHANTOM_ID:03d}_BenchPhantom")
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        _run([_script("nnUNetv2_cps4_make_phantom"), "-d", str(PHANTOM_ID), "--name", "BenchPhantom",
              "-n", str(args.phantom_cases), "--labeled-fraction", "1.0", "--test", str(args.phantom_test),
              "--seed", str(args.phantom_seed), "--size", args.phantom_size, "--overwrite"], env, log)
    return folder


def plans_with_batch_size(preprocessed: str, configuration: str, batch_size: Optional[int]) -> str:
    """A copy of nnUNetPlans with a fixed batch size (same preprocessed data); its plans identifier."""
    if batch_size is None:
        return "nnUNetPlans"
    identifier = f"nnUNetPlans_bs{batch_size}"
    with open(os.path.join(preprocessed, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    plans["plans_name"] = identifier
    plans["configurations"][configuration]["batch_size"] = int(batch_size)
    with open(os.path.join(preprocessed, identifier + ".json"), "w") as f:
        json.dump(plans, f, indent=2)
    return identifier


def split_dataset_id(raw_root: str, name: str) -> int:
    """The id of the split dataset `name` in this benchmark folder: the existing one, or the next free id."""
    taken = {}
    for folder in os.listdir(raw_root):
        if folder.startswith("Dataset") and "_" in folder:
            taken[folder.split("_", 1)[1]] = int(folder[7:10])
    return taken.get(name, max(list(taken.values()) + [PHANTOM_ID]) + 1)


def run_one(out: str, args, env: dict, source: str, fraction: float, seed: int, log: str) -> dict:
    """Split, plan, train every method, predict and evaluate for one (fraction, seed)."""
    from nnunet_cps4.data.convert import split_labeled_dataset
    from nnunet_cps4.data.layout import SPLIT_FILE
    from nnunet_cps4.experiments.evaluation import evaluate_folder

    name = f"Bench_f{int(round(fraction * 1000)):04d}_s{seed}"
    dataset_id = split_dataset_id(env["nnUNet_raw"], name)
    run_key = f"fraction_{fraction}_seed_{seed}"
    raw = os.path.join(env["nnUNet_raw"], f"Dataset{dataset_id:03d}_{name}")
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        split_labeled_dataset(source, dataset_id, fraction, seed=seed, name=name, overwrite=True)
    os.makedirs(os.path.join(out, "splits"), exist_ok=True)
    shutil.copy(os.path.join(raw, SPLIT_FILE), os.path.join(out, "splits", f"{run_key}.json"))
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    preprocessed = os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw))
    if not os.path.isfile(os.path.join(preprocessed, "nnUNetPlans.json")):
        _run([_script("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", args.configuration,
              "-np", "2", "-npfp", "2"], dict(env, nnUNet_n_proc_DA="1"), log)
    plans_id = plans_with_batch_size(preprocessed, args.configuration, args.batch_size)
    has_unlabeled = bool(os.listdir(os.path.join(raw, "imagesUnlabeled")))
    if has_unlabeled:
        _run([_script("nnUNetv2_cps4_preprocess_unlabeled"), "-d", str(dataset_id), "-c", args.configuration,
              "-p", plans_id], env, log)

    labels = {k: v for k, v in dataset_json["labels"].items() if v != 0 and k != "ignore"}
    run = {"dataset": os.path.basename(raw), "fraction": fraction, "seed": seed, "plans": plans_id,
           "num_labeled": dataset_json["numTraining"], "methods": {}}
    for method in args.methods:
        if not has_unlabeled and method != BASELINE:
            continue  # 100 % labeled: nothing for a semi-supervised method to use
        trainer = f"{METHODS[method]}_{args.schedule}"
        model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{trainer}__{plans_id}__{args.configuration}")
        pred = os.path.join(out, "predictions", method, run_key)
        metrics_file = os.path.join(pred, "metrics.json")
        if os.path.isfile(metrics_file):
            with open(metrics_file) as f:
                metrics = json.load(f)
            if _complete_older_metrics(metrics, pred, raw, source, dataset_json, model, args):
                with open(metrics_file, "w") as f:
                    json.dump(metrics, f, indent=1)
            run["methods"][method] = metrics
            continue
        train_seconds = None
        is_vlm = method.startswith("vlm")
        common = [str(dataset_id), args.configuration, args.fold, "-tr", trainer, "-p", plans_id, "-device",
                  args.device]
        if not os.path.isfile(os.path.join(model, f"fold_{args.fold}", "checkpoint_final.pth")):
            print(f"[{run_key}] training {trainer} ...", flush=True)
            train_seconds = _run([_script("nnUNetv2_cps4_pretrain_vlm" if is_vlm else "nnUNetv2_train")] + common,
                                 env, log)
        images = os.path.join(source, "imagesTs")
        if is_vlm:
            _run([_script("nnUNetv2_cps4_predict_vlm"), "-i", images, "-o", pred, "-d", str(dataset_id), "-c",
                  args.configuration, "-f", args.fold, "-tr", trainer, "-p", plans_id, "-device", args.device], env, log)
        else:
            _run([_script("nnUNetv2_predict"), "-i", images, "-o", pred, "-d", str(dataset_id), "-c", args.configuration,
                  "-f", args.fold, "-tr", trainer, "-p", plans_id, "-device", args.device, "-chk",
                  "checkpoint_final.pth"] + (["-npp", "0", "-nps", "0"] if args.device == "cpu" else []), env, log)
        # the only place the test labels are read
        metrics = evaluate_folder(pred, os.path.join(source, "labelsTs"), labels, dataset_json["file_ending"])
        metrics.update({"trainer": trainer, "train_seconds": train_seconds})
        if not is_vlm:
            quality = _pseudo_labels(raw, source, dataset_json, model, args)
            if quality:
                metrics["pseudo_labels"] = quality
        with open(metrics_file, "w") as f:
            json.dump(metrics, f, indent=1)
        run["methods"][method] = metrics
        print(f"[{run_key}] {method}: mean Dice {metrics['mean']['Dice']:.4f}", flush=True)
    return run


def _complete_older_metrics(metrics: dict, pred: str, raw: str, source: str, dataset_json: dict, model: str,
                            args) -> bool:
    """Add what metrics written by older versions lack (the test foreground volume ratio; the pseudo labels'
    volume ratio); True if anything was added."""
    added = False
    if "foreground_volume_ratio" not in metrics:
        from nnunet_cps4.experiments.evaluation import foreground_volume_ratio

        metrics["foreground_volume_ratio"] = foreground_volume_ratio(
            pred, os.path.join(source, "labelsTs"), sorted(metrics["cases"]), dataset_json["file_ending"])
        added = True
    if "pseudo_labels" in metrics and "foreground_volume_ratio" not in metrics["pseudo_labels"]:
        metrics["pseudo_labels"] = _pseudo_labels(raw, source, dataset_json, model, args)
        added = True
    return added


def _pseudo_labels(raw: str, source: str, dataset_json: dict, model: str, args) -> Optional[dict]:
    """Training signal, not a test number: the model's pseudo labels on the first 10 unlabeled training cases
    of the split, scored against the source's labels of those cases (None for a split without unlabeled cases)."""
    from nnunet_cps4.experiments.pseudo_label_quality import pseudo_label_quality, unlabeled_cases_with_references

    cases, refs = unlabeled_cases_with_references(raw, os.path.join(source, "labelsTr"), dataset_json["file_ending"],
                                                  len(dataset_json["channel_names"]), limit=10)
    return pseudo_label_quality(model, args.fold, cases, refs, torch_device(args.device)) if cases else None


def torch_device(name: str):
    import torch

    return torch.device(name)


def mean_sd(values) -> List[float]:
    """[mean, sample sd] over seeds, NaNs (class absent from every test case) ignored; the sd is NaN for a
    single value (one seed has no spread) and both are NaN if all values are."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [float("nan"), float("nan")]
    return [float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else float("nan")]


def paired_vs_baseline(runs: List[dict], fraction: float, method: str) -> List[float]:
    """mean Dice of `method` minus supervised nnU-Net's on the same split, one value per seed where both ran."""
    return [r["methods"][method]["mean"]["Dice"] - r["methods"][BASELINE]["mean"]["Dice"] for r in runs
            if r["fraction"] == fraction and method in r["methods"] and BASELINE in r["methods"]]


def summarize(runs: List[dict], methods: List[str], class_names: List[str]) -> dict:
    """mean ± sd over seeds of the mean and per-class Dice (and mean IoU/HD95), per fraction and method."""
    summary = {}
    for fraction in sorted({r["fraction"] for r in runs}):
        summary[str(fraction)] = {}
        for method in methods:
            per_seed = [r["methods"][method] for r in runs if r["fraction"] == fraction and method in r["methods"]]
            if not per_seed:
                continue
            entry = {"seeds": len(per_seed),
                     "paired_Dice_vs_supervised": mean_sd(paired_vs_baseline(runs, fraction, method))}
            for metric in ("Dice", "IoU", "HD95"):
                entry[f"mean_{metric}"] = mean_sd([m["mean"][metric] for m in per_seed])
            entry["foreground_volume_ratio"] = mean_sd([m["foreground_volume_ratio"]["median"] for m in per_seed])
            entry["per_class_Dice"] = {c: mean_sd([m["per_class"][c]["Dice"] for m in per_seed]) for c in class_names}
            quality = [m["pseudo_labels"]["mean_Dice"] for m in per_seed if "pseudo_labels" in m]
            if quality:
                entry["pseudo_label_mean_Dice"] = {k: mean_sd([q[k] for q in quality]) for k in quality[0]}
            volume = [m["pseudo_labels"]["foreground_volume_ratio"] for m in per_seed
                      if "foreground_volume_ratio" in m.get("pseudo_labels", {})]  # older cached runs lack it
            if volume:
                entry["pseudo_label_volume_ratio"] = {k: mean_sd([v[k] for v in volume]) for k in volume[0]}
            summary[str(fraction)][method] = entry
    return summary


def fmt_mean_sd(v: List[float], scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    """'mean ± sd' (just 'mean' for one seed, 'n/a' without values), scaled to % by default."""
    if np.isnan(v[0]):
        return "n/a"
    text = f"{scale * v[0]:{'+' if sign else ''}.{digits}f}"
    return text if np.isnan(v[1]) else f"{text} ± {scale * v[1]:.{digits}f}"


def markdown_table(summary: dict, class_names: List[str], args) -> str:
    pm = fmt_mean_sd
    lines = [f"Schedule `{args.schedule}`, configuration {args.configuration}, batch size {args.batch_size}, fold "
             f"{args.fold}, final checkpoints; Dice in %, mean ± sample sd over seeds {args.seeds} (no sd for one "
             f"seed). 'vs supervised': the method's mean Dice minus supervised nnU-Net's on the same split, "
             f"mean ± sd of these paired differences.", ""]
    for fraction, methods in summary.items():
        lines += [f"### {float(fraction) * 100:g} % labeled", "",
                  "| method | mean Dice | vs supervised (paired) | mean IoU | mean HD95 (mm) | foreground volume "
                  "pred/true (median) | seeds |", "|---|---|---|---|---|---|---|"]
        for method, e in methods.items():
            lines.append(f"| {method} | {pm(e['mean_Dice'])} | {pm(e['paired_Dice_vs_supervised'], sign=True)} | "
                         f"{pm(e['mean_IoU'])} | {pm(e['mean_HD95'], scale=1.0)} | "
                         f"{pm(e['foreground_volume_ratio'], scale=1.0, digits=2)} | {e['seeds']} |")
        quality = {m: e["pseudo_label_mean_Dice"] for m, e in methods.items() if "pseudo_label_mean_Dice" in e}
        if quality:
            lines += ["", "Pseudo labels on unlabeled training cases (mean Dice vs their true labels of the final "
                      "teacher and VLM, no test-time augmentation; for supervised nnU-Net its network, i.e. the "
                      "labels self-training would start from; a training signal, not a test score), and the "
                      "median predicted / true foreground volume of each source (shrinking or growing the spine "
                      "shows here without a test prediction):", "",
                      "| method | teacher | VLM (y_text) | refined | foreground volume teacher / VLM / refined |",
                      "|---|---|---|---|---|"]
            for m, q in quality.items():
                volume = methods[m].get("pseudo_label_volume_ratio", {})
                lines.append(f"| {m} | " + " | ".join(pm(q[k]) if k in q else "-" for k in ("teacher", "text",
                                                                                             "refined"))
                             + " | " + " / ".join(pm(volume[k], scale=1.0, digits=2) for k in volume) + " |")
        lines += ["", "| class | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for c in class_names:
            lines.append(f"| {c} | " + " | ".join(pm(methods[m]["per_class_Dice"][c]) for m in methods) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_summary(summary: dict, class_names: List[str], out_png: str) -> None:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fractions = list(summary)
    fig, axes = plt.subplots(len(fractions), 1, figsize=(12, 3.5 * len(fractions)), squeeze=False)
    for ax, fraction in zip(axes[:, 0], fractions):
        methods = list(summary[fraction])
        width = 0.8 / max(1, len(methods))
        x = np.arange(len(class_names))
        for i, m in enumerate(methods):
            means = [summary[fraction][m]["per_class_Dice"][c][0] for c in class_names]
            sds = [summary[fraction][m]["per_class_Dice"][c][1] for c in class_names]
            ax.bar(x + i * width, means, width, yerr=sds,
                   label=f"{m} ({100 * summary[fraction][m]['mean_Dice'][0]:.1f})")
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels(class_names, fontsize=7, rotation=45)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(f"{float(fraction) * 100:g} % labeled (mean Dice in legend)", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_test_cases(out: str, source: str, run: dict, methods: List[str], num_labels: int, out_png: str,
                    num_cases: int = 3) -> None:
    """Every method's prediction of the first test cases of one run, beside image and reference (a picture of
    what the mean Dice summarises; drawn after the evaluation, from its files)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_cps4.plots import save_prediction_panels

    methods = [m for m in methods if m in run["methods"]]
    run_key = f"fraction_{run['fraction']}_seed_{run['seed']}"
    with open(os.path.join(source, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    rw = SimpleITKIO()
    rows = []
    for case in sorted(run["methods"][methods[0]]["cases"])[:num_cases] if methods else []:
        image = rw.read_images([os.path.join(source, "imagesTs", f"{case}_0000{ending}")])[0][0]
        reference = rw.read_seg(os.path.join(source, "labelsTs", case + ending))[0][0]
        predictions = [rw.read_seg(os.path.join(out, "predictions", m, run_key, case + ending))[0][0]
                       for m in methods]
        rows.append((case, image, reference, predictions))
    if rows:
        save_prediction_panels(rows, methods, num_labels, out_png)


def record_seeds(path: str, args) -> None:
    """Every split seed and fraction this folder has run, kept across reports (each report's own seeds are in
    its results.json)."""
    seen = {"seeds": [], "fractions": []}
    if os.path.isfile(path):
        with open(path) as f:
            seen = json.load(f)
    with open(path, "w") as f:
        json.dump({"seeds": sorted(set(seen["seeds"]) | set(args.seeds)),
                   "fractions": sorted(set(seen["fractions"]) | set(args.fractions)),
                   "phantom_seed": args.phantom_seed}, f)


def run_benchmark(args) -> dict:
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    protocol = {k: getattr(args, k) for k in PROTOCOL_KEYS}
    protocol["source"] = os.path.abspath(args.source) if args.source else None
    check_protocol(out, protocol)
    env = _bench_env(out, {"nnUNet_n_proc_DA": "0"} if args.device == "cpu" else None)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    log = os.path.join(out, "benchmark.log")
    record_seeds(os.path.join(out, "seeds.json"), args)
    source = prepare_source(out, args, env, log)
    with open(os.path.join(source, "dataset.json")) as f:
        class_names = [k for k, v in json.load(f)["labels"].items() if v != 0 and k != "ignore"]

    runs = [run_one(out, args, env, source, fraction, seed, log) for fraction in args.fractions
            for seed in args.seeds]
    summary = summarize(runs, args.methods, class_names)
    results = {"protocol": protocol, "command": " ".join(["nnUNetv2_cps4_benchmark"] + args.argv), "runs": runs,
               "summary": summary}
    text = markdown_table(summary, class_names, args)
    if args.cost:
        from nnunet_cps4.experiments.cost import format_cost_table, measure_cost

        first = runs[0]
        trainers = [f"{METHODS[m]}_{args.schedule}" for m in ("supervised", "meanteacher", "cps4")
                    if m in args.methods]
        results["cost"] = measure_cost(first["dataset"], args.configuration, trainers, first["plans"], args.device,
                                       env=env)
        text += "\n### Per-iteration cost\n\n" + results["cost"]["protocol"] + "\n\n" + \
            format_cost_table(results["cost"]) + "\n"
    report = os.path.join(out, args.report)
    with open(report + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(report + ".md", "w") as f:
        f.write(f"Command: `{results['command']}`\n\n{text}")
    plot_summary(summary, class_names, report + ".png")
    plot_test_cases(out, source, runs[0], args.methods, len(class_names), report + "_cases.png")
    print(text)
    print(f"results: {report}.md, {report}.png, {report}_cases.png")
    return results


def build_parser() -> argparse.ArgumentParser:
    from nnunet_cps4.nnunet.trainers.schedules import SCHEDULES

    p = argparse.ArgumentParser(prog="nnUNetv2_cps4_benchmark",
                                description="CPS4 vs supervised nnU-Net and the mean teacher under one protocol "
                                            "(see the module docstring of nnunet_cps4.experiments.benchmark).")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="default settings (default: cpu)")
    p.add_argument("--out", default="cps4_benchmark", help="benchmark folder (default ./cps4_benchmark)")
    p.add_argument("--source", help="fully labeled nnU-Net raw dataset with imagesTs/labelsTs (id, name or "
                                    "folder); default: a spine phantom")
    p.add_argument("--fractions", type=float, nargs="+", help="labeled fractions")
    p.add_argument("--seeds", type=int, nargs="+", help="split seeds (which cases are labeled)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    p.add_argument("--schedule", choices=sorted(SCHEDULES))
    p.add_argument("--device", choices=("cpu", "cuda", "mps"))
    p.add_argument("--configuration", default="2d")
    p.add_argument("--batch-size", type=int, default=2, help="batch size of every method (plans copy); 0: as "
                                                             "planned by nnU-Net")
    p.add_argument("--fold", default="all")
    p.add_argument("--phantom-cases", type=int)
    p.add_argument("--phantom-test", type=int)
    p.add_argument("--phantom-size")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--no-cost", action="store_true", help="skip the per-iteration cost measurement")
    p.add_argument("--report", default="results", help="name of the report files <out>/<report>.{json,md,png}; "
                                                      "several reports can share one benchmark folder")
    return p


def parse_args(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("fractions", "seeds", "methods", "schedule", "device", "phantom_cases", "phantom_test"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.phantom_size is None:
        args.phantom_size = preset["phantom_size"]
    args.cost = preset["cost"] and not args.no_cost
    args.batch_size = args.batch_size or None
    if BASELINE not in args.methods:
        args.methods = [BASELINE] + args.methods  # the supervised baseline is always reported
    args.argv = argv
    return args


def _main(argv: Optional[Sequence[str]] = None) -> None:
    run_benchmark(parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
