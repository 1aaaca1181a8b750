"""`nnUNetv2_cps4_benchmark`: CPS4 against supervised nnU-Net and the mean teacher, side by side, one protocol.

Protocol (the evaluation rules of docs/BENCHMARKS.md), for each labeled fraction f and seed s:
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
5. With a spine order in the dataset's prompts, every method's test predictions are also post-processed by
   `nnUNetv2_cps4_order_levels` (into predictions_ordered/) and evaluated again: what ordering adds to each method.
6. results.json, results.md (mean ± sd over seeds, per class and mean, with the supervised baseline), results.png,
   seeds.json, splits/, protocol.json and, once per benchmark, the per-iteration cost (`nnunet_cps4.experiments.cost`).
With --repeats N every method is trained N times per split (repeat r > 0 in nnUNet_results_repeat<r>/, predictions
in <split>_repeat<r>/): nnU-Net training is not deterministic, and the report gives the run-to-run spread beside the
spread over splits (each split's value is the mean of its trainings).
A benchmark folder remembers its protocol (protocol.json) and refuses to be reused under another one; within one
protocol a rerun skips what is done, so an interrupted benchmark continues where it stopped.
All nnU-Net folders live inside the benchmark folder: the user's nnUNet_raw/preprocessed/results are not touched.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from nnunet_cps4.data.layout import SPLIT_FILE
from nnunet_cps4.data.phantom.field import DEFAULT_FIELD
from nnunet_cps4.data.split import resolve_raw_dataset, split_labeled_dataset
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.experiments.cost import format_cost_table, measure_cost
from nnunet_cps4.experiments.evaluation import every_level_placed, evaluate_folder, foreground_volume_ratio
from nnunet_cps4.experiments.offline_pseudo_labels import SUFFIX as OFFLINE_SUFFIX
from nnunet_cps4.experiments.offline_pseudo_labels import prepare_offline_pseudo_labelling
from nnunet_cps4.experiments.pseudo_label_quality import pseudo_label_quality, unlabeled_cases_with_references
from nnunet_cps4.experiments.report import (BASELINE, markdown_table, plot_summary, plot_test_cases,
                                            summarize)
from nnunet_cps4.experiments.variants import (ALL_SCHEDULES, EXPERIMENT_TRAINER_FOLDER, METHODS,
                                              OFFLINE_PSEUDO_LABELS)
from nnunet_cps4.method.prompts import load_dataset_prompts
from nnunet_cps4.method.spine_order import LevelOrder
from nnunet_cps4.nnunet.discovery import EXT_TRAINER_FOLDER, ext_trainer_value

PRESETS: Dict[str, dict] = {
    # the README's main job: one seed, CPS4 beside supervised nnU-Net on the lumbar phantom (8 labeled as in the
    # paper's 5 % of MRSpineSeg, 32 unlabeled, 10 test; 5x58x40 voxels), <= 15 minutes on 2 CPU cores
    "demo": dict(fractions=[0.2], seeds=[0], methods=["supervised", "cps4"], schedule="demo", device="cpu",
                 phantom_cases=50, phantom_test=10, phantom_size="5x96x40", phantom_field="lumbar", cost=False),
    # docs/BENCHMARKS.md on 2 CPU cores
    "cpu": dict(fractions=[0.05, 0.10], seeds=[0, 1, 2], methods=["supervised", "meanteacher", "vlm", "cps4"],
                schedule="cpu5k", device="cpu", phantom_cases=50, phantom_test=10, phantom_size="5x96x40",
                cost=True),
    # the paper's regime at MRSpineSeg's size: 174 phantom volumes, 10 fixed test cases, 164 training cases of which
    # 5 % (8) or 10 % (16) labeled; every method beside offline pseudo-labelling, three split seeds
    "paper": dict(fractions=[0.05, 0.10], seeds=[0, 1, 2],
                  methods=["supervised", "offline_pseudo_labels", "meanteacher", "cps4"], schedule="cpu5k",
                  device="cpu", phantom_cases=174, phantom_test=10, phantom_size="5x96x40", cost=True),
    # one H100/H200, about 10 minutes (sized by arithmetic from CPU timings, not yet run on a GPU)
    "gpu": dict(fractions=[0.05], seeds=[0, 1, 2], methods=["supervised", "meanteacher", "cps4"],
                schedule="cpu5k", device="cuda", phantom_cases=50, phantom_test=10, phantom_size="5x96x40",
                cost=True),
    # tests of the pipeline: tiny phantom, the 6-iteration tick schedule, a cost measurement of 1 + 3 steps
    "tiny": dict(fractions=[0.5], seeds=[0], methods=["supervised", "vlm", "cps4", "offline_pseudo_labels"],
                 schedule="tick",
                 device="cpu", phantom_cases=8, phantom_test=2, phantom_size="4x80x32", cost=True,
                 cost_steps=dict(warmup=1, steps=3)),
}
PROTOCOL_KEYS = ("source", "phantom_cases", "phantom_test", "phantom_size", "phantom_seed", "phantom_field",
                 "schedule", "configuration", "batch_size", "fold")
# what a protocol.json written before a key existed meant by it
PROTOCOL_DEFAULTS = {"phantom_field": DEFAULT_FIELD}
PHANTOM_ID = 700


def _bench_env(out: str, extra: Optional[dict] = None) -> dict:
    """The environment of the benchmark's commands: its own nnU-Net folders, and every trainer of
    `nnunet_cps4.experiments.variants` visible to nnU-Net's lookup."""
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = os.path.join(out, var)
        os.makedirs(env[var], exist_ok=True)
    env.setdefault("nnUNet_def_n_proc", "2")
    env["PYTHONUNBUFFERED"] = "1"  # training output reaches the per-epoch progress lines as it is written
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer", ""),
                                             (EXT_TRAINER_FOLDER, EXPERIMENT_TRAINER_FOLDER))
    env.update(extra or {})
    return env


def _run(cmd: List[str], env: dict, log: str, progress: Optional[str] = None, epochs: Optional[int] = None) -> float:
    """Run a console script, appending its output to `log`; return the wall time.

    With `progress` (a label) the output of an nnU-Net training is also summarised on the console, one line per
    epoch: epoch k of `epochs`, train loss, epoch time and the time left (stage (i) and stage (ii) of a CPS4
    training are shown as such)."""
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        monitor = _EpochProgress(progress, epochs) if progress else None
        for line in proc.stdout:
            f.write(line)
            if monitor is not None:
                monitor.feed(line)
        returncode = proc.wait()
        seconds = time.time() - start
        f.write(f"# {os.path.basename(cmd[0])}: exit {returncode}, {seconds:.1f} s wall\n")
    if returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {returncode}); see {log}")
    return seconds


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?: ")


class _EpochProgress:
    """Turns nnU-Net's per-epoch console lines ('Epoch k', 'train_loss x', 'Epoch time: t s') into one line."""

    def __init__(self, label: str, epochs: Optional[int]):
        self.label, self.epochs, self.stage = label, epochs, ""
        self.epoch, self.loss, self.times = None, None, []

    def feed(self, line: str) -> None:
        text = line.strip()
        if _TIMESTAMP.match(text):  # nnU-Net prefixes its log lines with a timestamp
            text = text.split(": ", 1)[-1]
        if text.startswith("No stage-(i) VLM"):
            self.stage, self.times = " stage (i)", []
        elif text.startswith("Stage-(i) VLM loaded"):
            self.stage, self.times = " stage (ii)", []
        elif text.startswith("Epoch ") and text[6:].isdigit():
            self.epoch = int(text[6:])
        elif text.startswith("train_loss"):
            self.loss = text.split()[-1]
        elif text.startswith("Epoch time:") and self.epoch is not None:
            self.times.append(float(text.split()[2]))
            done = self.epoch + 1
            of = f" of {self.epochs}" if self.epochs else ""
            left = ""
            if self.epochs:
                left = f", ~{(self.epochs - done) * sum(self.times) / len(self.times) / 60:.1f} min left"
            print(f"  {self.label}{self.stage}: epoch {done}{of}, train_loss {self.loss}, "
                  f"{self.times[-1]:.1f} s/epoch{left}", flush=True)


def _script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def check_protocol(out: str, protocol: dict) -> None:
    path = os.path.join(out, "protocol.json")
    if os.path.isfile(path):
        with open(path) as f:
            existing = json.load(f)
        existing = {**PROTOCOL_DEFAULTS, **existing}
        diffs = {k: (existing.get(k), protocol.get(k)) for k in PROTOCOL_KEYS if existing.get(k) != protocol.get(k)}
        if diffs:
            raise CPS4Error(f"{out} holds a benchmark made under another protocol ({diffs}; existing, requested). "
                            f"Fix: use another --out folder, or the same settings")
    else:
        with open(path, "w") as f:
            json.dump(protocol, f, indent=2)


def resolve_source(source: Optional[str]) -> Optional[str]:
    """The user's source dataset folder (a folder, or an id or name in the user's own nnUNet_raw), checked before
    the benchmark writes anything; None for the built-in phantom."""
    if not source:
        return None
    folder = resolve_raw_dataset(source)
    for sub in ("dataset.json", "labelsTs"):
        if not os.path.exists(os.path.join(folder, sub)):
            raise CPS4Error(f"{folder} has no {sub}: the benchmark needs a fully labeled nnU-Net raw dataset with a "
                            f"fixed labeled test set. Fix: add imagesTs/ and labelsTs/ (and dataset.json) to it")
    return folder


def prepare_source(args, env: dict, log: str) -> str:
    """The fully labeled source dataset with its fixed test set: the user's (resolved), or a phantom made once."""
    if args.source:
        return args.source
    folder = os.path.join(env["nnUNet_raw"], f"Dataset{PHANTOM_ID:03d}_BenchPhantom")
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        _run([_script("nnUNetv2_cps4_make_phantom"), "-d", str(PHANTOM_ID), "--name", "BenchPhantom",
              "-n", str(args.phantom_cases), "--labeled-fraction", "1.0", "--test", str(args.phantom_test),
              "--seed", str(args.phantom_seed), "--size", args.phantom_size,
              "--field", args.phantom_field, "--overwrite"], env, log)
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


def repeat_env(out: str, env: dict, repeat: int) -> dict:
    """The environment of the `repeat`-th training of every method (0: the benchmark's own): a results folder of
    its own, so a repeat trains everything again (stage (i) included) on the same split and preprocessed data."""
    if repeat == 0:
        return env
    results = os.path.join(out, f"nnUNet_results_repeat{repeat}")
    os.makedirs(results, exist_ok=True)
    return dict(env, nnUNet_results=results)


def run_one(out: str, args, env: dict, source: str, fraction: float, seed: int, log: str, repeat: int = 0) -> dict:
    """Split, plan, train every method, predict and evaluate for one (fraction, seed); `repeat` > 0 trains every
    method once more on the same split (`repeat_env`)."""
    name = f"Bench_f{int(round(fraction * 1000)):04d}_s{seed}"
    dataset_id = split_dataset_id(env["nnUNet_raw"], name)
    split_key = f"fraction_{fraction}_seed_{seed}"
    run_key = split_key + (f"_repeat{repeat}" if repeat else "")
    raw = os.path.join(env["nnUNet_raw"], f"Dataset{dataset_id:03d}_{name}")
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        split_labeled_dataset(source, dataset_id, fraction, seed=seed, name=name, overwrite=True)
    os.makedirs(os.path.join(out, "splits"), exist_ok=True)
    shutil.copy(os.path.join(raw, SPLIT_FILE), os.path.join(out, "splits", f"{split_key}.json"))
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

    env = repeat_env(out, env, repeat)  # (the split and its preprocessing above are shared by every repeat)
    labels = {k: v for k, v in dataset_json["labels"].items() if v != 0 and k != "ignore"}
    order = LevelOrder.from_prompts(load_dataset_prompts(dataset_json, os.path.basename(raw)))  # None: no order
    run = {"dataset": os.path.basename(raw), "fraction": fraction, "seed": seed, "repeat": repeat, "plans": plans_id,
           "num_labeled": dataset_json["numTraining"], "methods": {}}
    for method in args.methods:
        if not has_unlabeled and method != BASELINE:
            continue  # 100 % labeled: nothing for a semi-supervised method to use
        method_dataset_id, method_raw = dataset_id, raw
        if method == OFFLINE_PSEUDO_LABELS:  # stock nnU-Net on labeled + pseudo-labeled cases, same schedule
            tag = f"_r{repeat}" if repeat else ""  # the repeat's own supervised model labels its own copy
            method_dataset_id, method_raw = prepare_offline_pseudo_labelling(
                raw, dataset_id, plans_id, args, env, lambda cmd: _run(cmd, env, log), _script,
                split_dataset_id(env["nnUNet_raw"], name + OFFLINE_SUFFIX + tag), tag)
        trainer = f"{METHODS[method]}_{args.schedule}"
        model = os.path.join(env["nnUNet_results"], os.path.basename(method_raw),
                             f"{trainer}__{plans_id}__{args.configuration}")
        pred = os.path.join(out, "predictions", method, run_key)
        metrics_file = os.path.join(pred, "metrics.json")

        def after_ordering() -> dict:  # the method's test predictions post-processed by nnUNetv2_cps4_order_levels
            ordered = os.path.join(out, "predictions_ordered", method, run_key)
            _run([_script("nnUNetv2_cps4_order_levels"), "-i", pred, "-o", ordered, "-d", str(dataset_id)], env, log)
            result = evaluate_folder(ordered, os.path.join(source, "labelsTs"), labels, dataset_json["file_ending"],
                                     order)
            return {"mean": {k: result["mean"][k] for k in ("Dice", "HD95")},
                    "every_level_placed": result["every_level_placed"]["fraction"]}

        if os.path.isfile(metrics_file):
            with open(metrics_file) as f:
                metrics = json.load(f)
            if _complete_older_metrics(metrics, pred, raw, source, dataset_json, model, args, order, after_ordering):
                with open(metrics_file, "w") as f:
                    json.dump(metrics, f, indent=1)
            run["methods"][method] = metrics
            continue
        train_seconds = None
        is_vlm = method.startswith("vlm")
        common = [str(method_dataset_id), args.configuration, args.fold, "-tr", trainer, "-p", plans_id, "-device",
                  args.device]
        if not os.path.isfile(os.path.join(model, f"fold_{args.fold}", "checkpoint_final.pth")):
            print(f"[{run_key}] training {trainer} ...", flush=True)
            train_seconds = _run([_script("nnUNetv2_cps4_pretrain_vlm" if is_vlm else "nnUNetv2_train")] + common,
                                 env, log, progress=f"[{run_key}] {method}",
                                 epochs=ALL_SCHEDULES[args.schedule].get("epochs"))
        images = os.path.join(source, "imagesTs")
        if is_vlm:
            _run([_script("nnUNetv2_cps4_predict_vlm"), "-i", images, "-o", pred, "-d", str(dataset_id), "-c",
                  args.configuration, "-f", args.fold, "-tr", trainer, "-p", plans_id, "-device", args.device], env, log)
        else:
            _run([_script("nnUNetv2_predict"), "-i", images, "-o", pred, "-d", str(method_dataset_id), "-c",
                  args.configuration,
                  "-f", args.fold, "-tr", trainer, "-p", plans_id, "-device", args.device, "-chk",
                  "checkpoint_final.pth"] + (["-npp", "0", "-nps", "0"] if args.device == "cpu" else []), env, log)
        # the only place the test labels are read
        metrics = evaluate_folder(pred, os.path.join(source, "labelsTs"), labels, dataset_json["file_ending"],
                                  order)
        metrics.update({"trainer": trainer, "train_seconds": train_seconds})
        if order is not None:
            metrics["after_ordering"] = after_ordering()
        quality = _pseudo_labels(raw, source, dataset_json, model, args)
        if quality:
            metrics["pseudo_labels"] = quality
        with open(metrics_file, "w") as f:
            json.dump(metrics, f, indent=1)
        run["methods"][method] = metrics
        print(f"[{run_key}] {method}: mean Dice {metrics['mean']['Dice']:.4f}", flush=True)
    return run


def _complete_older_metrics(metrics: dict, pred: str, raw: str, source: str, dataset_json: dict, model: str,
                            args, order: Optional[LevelOrder], after_ordering: Callable[[], dict]) -> bool:
    """Add what metrics written by older versions lack (the test foreground volume ratio, cases with every level
    placed and the scores after spine ordering; the pseudo labels' volume ratio and spine-order scores); True if
    anything was added."""
    added = False
    if order is not None and "after_ordering" not in metrics:
        metrics["after_ordering"] = after_ordering()
        added = True
    if order is not None and "every_level_placed" not in metrics:
        metrics["every_level_placed"] = every_level_placed(pred, os.path.join(source, "labelsTs"),
                                                           sorted(metrics["cases"]), order, dataset_json["file_ending"])
        added = True
    if "foreground_volume_ratio" not in metrics:
        metrics["foreground_volume_ratio"] = foreground_volume_ratio(
            pred, os.path.join(source, "labelsTs"), sorted(metrics["cases"]), dataset_json["file_ending"])
        added = True
    if "pseudo_labels" in metrics and not {"foreground_volume_ratio", "spine_order"} <= set(metrics["pseudo_labels"]):
        metrics["pseudo_labels"] = _pseudo_labels(raw, source, dataset_json, model, args)
        added = True
    return added


def _pseudo_labels(raw: str, source: str, dataset_json: dict, model: str, args) -> Optional[dict]:
    """Training signal, not a test number: the model's pseudo labels on the first 10 unlabeled training cases
    of the split, scored against the source's labels of those cases (None for a split without unlabeled cases)."""
    cases, refs = unlabeled_cases_with_references(raw, os.path.join(source, "labelsTr"), dataset_json["file_ending"],
                                                  len(dataset_json["channel_names"]), limit=10)
    return pseudo_label_quality(model, args.fold, cases, refs, torch.device(args.device)) if cases else None


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
    args.source = resolve_source(args.source)  # in the user's nnUNet_raw, before anything is written
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    protocol = {k: getattr(args, k) for k in PROTOCOL_KEYS}
    check_protocol(out, protocol)
    env = _bench_env(out, {"nnUNet_n_proc_DA": "0"} if args.device == "cpu" else None)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    log = os.path.join(out, "benchmark.log")
    record_seeds(os.path.join(out, "seeds.json"), args)
    source = prepare_source(args, env, log)
    with open(os.path.join(source, "dataset.json")) as f:
        class_names = [k for k, v in json.load(f)["labels"].items() if v != 0 and k != "ignore"]

    runs = [run_one(out, args, env, source, fraction, seed, log, repeat) for fraction in args.fractions
            for seed in args.seeds for repeat in range(args.repeats)]
    summary = summarize(runs, args.methods, class_names)
    results = {"protocol": protocol, "command": " ".join(["nnUNetv2_cps4_benchmark"] + args.argv),
               "repeats": args.repeats, "runs": runs, "summary": summary}
    text = markdown_table(summary, class_names, args)
    if args.cost:
        first = runs[0]
        trainers = [f"{METHODS[m]}_{args.schedule}" for m in ("supervised", "meanteacher", "cps4")
                    if m in args.methods]
        results["cost"] = measure_cost(first["dataset"], args.configuration, trainers, first["plans"], args.device,
                                       env=env, **args.cost_steps)
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
