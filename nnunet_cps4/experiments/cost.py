"""Per-iteration time and peak memory of trainers on the same batch, as ratios to nnUNetTrainer.

Protocol: every trainer is built for the same dataset, plans, configuration and fold, in its own child process (so
peak memory is its own). The child seeds numpy/torch identically, initialises the trainer as training does
(`on_train_start`: loaders, teacher, VLM), moves a semi-supervised trainer to its first epoch with the unlabeled
loss (past the labeled-only warm-up, whole-case teacher labels made: the steps that cost what the method adds),
draws one labeled batch and `n_unlabeled` unlabeled batches up front, then times `train_step` on that labeled batch
(cycling the unlabeled ones) for `steps` steps after `warmup` steps. Data loading and augmentation are excluded:
what is compared is the work each method adds per optimizer step. Memory: CUDA max_memory_allocated during the timed
steps, or on the CPU the process's peak RSS during the timed steps (VmHWM after resetting it through
/proc/self/clear_refs).

The trainers must be trainable as they are (CPS4 needs its stage-(i) checkpoint, else it would train it first).
"""
import itertools
import json
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

import nnunet_cps4
from nnunet_cps4.data.layout import require_env_folder, resolve_dataset_name
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.experiments.variants import trainer_class

RESULT_PREFIX = "CPS4_COST_RESULT "
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(nnunet_cps4.__file__)))


def _peak_rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _measure_in_this_process(dataset: str, configuration: str, plans: str, trainer_name: str, device: str,
                             warmup: int, steps: int, n_unlabeled: int, seed: int) -> dict:
    name = resolve_dataset_name(dataset)
    base = os.path.join(require_env_folder("nnUNet_preprocessed"), name)
    plans_dict = load_json(os.path.join(base, plans + ".json"))
    plans_dict["continue_training"] = False
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    trainer = trainer_class(trainer_name)(plans=plans_dict, configuration=configuration, fold="all",
                                               dataset_json=load_json(os.path.join(base, "dataset.json")),
                                               device=dev)
    trainer.on_train_start()
    if hasattr(trainer, "start_unlabeled_phase"):
        trainer.start_unlabeled_phase()
    np.random.seed(seed)
    torch.manual_seed(seed)
    batch = next(trainer.dataloader_train)
    if getattr(trainer, "dataloader_unlabeled", None) is not None:
        unlabeled = [next(trainer.dataloader_unlabeled) for _ in range(n_unlabeled)]
        trainer.dataloader_unlabeled = itertools.cycle(unlabeled)
    trainer.network.train()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        trainer.train_step(batch)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        sync()
        times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else _peak_rss_mb()
    return {"trainer": trainer_name, "seconds_per_iteration": float(np.median(times)),
            "seconds_per_iteration_mean": float(np.mean(times)), "seconds_per_iteration_sd": float(np.std(times)),
            "peak_memory_mb": memory, "memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "peak_rss",
            "batch_size": int(batch["data"].shape[0]), "device": device, "steps": steps, "warmup": warmup}


def measure_cost(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
                 device: str = "cpu", warmup: int = 3, steps: int = 10, n_unlabeled: int = 4, seed: int = 0,
                 env: Optional[dict] = None) -> dict:
    """Measure each trainer in a child process; ratios are relative to the first trainer."""
    if env is None:  # bad settings fail here, in one line, not in a child's traceback
        plans_file = os.path.join(require_env_folder("nnUNet_preprocessed"), resolve_dataset_name(dataset),
                                  plans + ".json")
        if not os.path.isfile(plans_file):
            raise CPS4Error(f"{plans_file} not found. Fix: plan and preprocess the dataset first (or pass -p)")
    results: List[dict] = []
    for name in trainers:
        cmd = [sys.executable, "-m", "nnunet_cps4.experiments.cost", "--child", dataset, configuration, plans, name, device,
               str(warmup), str(steps), str(n_unlabeled), str(seed)]
        # `-m` puts the working directory first on sys.path: run the child beside the installed package, so a
        # source checkout as working directory (without the shipped prompt files) cannot shadow it
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=_PACKAGE_PARENT)
        lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"cost measurement of {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        results.append(json.loads(lines[-1][len(RESULT_PREFIX):]))
    reference = results[0]
    for r in results:
        r["time_ratio"] = r["seconds_per_iteration"] / reference["seconds_per_iteration"]
        r["memory_ratio"] = (r["peak_memory_mb"] / reference["peak_memory_mb"]
                             if r["peak_memory_mb"] and reference["peak_memory_mb"] else None)
    return {"reference": reference["trainer"], "results": results,
            "protocol": f"same labeled batch, {warmup} warm-up + {steps} timed train_step calls each, data loading "
                        f"excluded, median time; each trainer in its own process"}


def format_cost_table(cost: dict) -> str:
    rows = ["| trainer | s / iteration (median) | ratio | peak memory (MB) | ratio |", "|---|---|---|---|---|"]
    for r in cost["results"]:
        memory = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else "n/a"
        memory_ratio = f"{r['memory_ratio']:.2f}x" if r["memory_ratio"] else "n/a"
        rows.append(f"| {r['trainer']} | {r['seconds_per_iteration']:.3f} | {r['time_ratio']:.2f}x | {memory} | "
                    f"{memory_ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":  # the child process of measure_cost
    d, c, p, t, dev, w, s, n, seed = sys.argv[2:11]
    print(RESULT_PREFIX + json.dumps(_measure_in_this_process(d, c, p, t, dev, int(w), int(s), int(n), int(seed))),
          flush=True)
