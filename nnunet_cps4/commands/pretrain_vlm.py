"""`nnUNetv2_cps4_pretrain_vlm DATASET CONFIG FOLD`: CPS4 stage (i) on its own (stage (ii) runs it itself).

Trains `nnUNetTrainerCPS4VLM` (or a variant, `-tr`) on the labeled training cases of the fold, validates the
fused map per class on the fold's validation cases, and leaves `checkpoint_final.pth` (with metadata), the log,
progress.png and PNG panels in nnUNet_results/DatasetXXX/<vlm trainer>__<plans>__<config>/fold_<fold>/.
"""
import argparse
import os
from typing import Optional, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import require_env_folder, resolve_dataset_name
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.nnunet.trainers.registry import find_trainer_class
from nnunet_cps4.nnunet.trainers.vlm_pretraining import run_stage1


def _main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_pretrain_vlm",
        description="CPS4 stage (i): train the class-prompt VLM on the labeled cases of a fold. "
                    "nnUNetv2_train ... -tr nnUNetTrainerCPS4 runs this itself when the checkpoint is missing.")
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("configuration", help="e.g. 2d or 3d_fullres")
    parser.add_argument("fold", help="fold number or 'all'")
    parser.add_argument("-tr", default="nnUNetTrainerCPS4VLM", help="stage-(i) trainer or variant, e.g. "
                        "nnUNetTrainerCPS4VLM_noTokenLoss (default nnUNetTrainerCPS4VLM)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cpu or mps (default: cuda when available)")
    parser.add_argument("--epochs", type=int, help="override the trainer's number of epochs")
    parser.add_argument("--iterations", type=int, help="override the iterations per epoch")
    parser.add_argument("--val-iterations", type=int, help="override the validation iterations per epoch")
    parser.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--val", action="store_true", help="only run the final validation")
    args = parser.parse_args(argv)

    name = resolve_dataset_name(args.dataset)
    base = os.path.join(require_env_folder("nnUNet_preprocessed"), name)
    plans_file = os.path.join(base, args.p + ".json")
    if not os.path.isfile(plans_file):
        raise CPS4Error(f"{plans_file} not found. Fix: run nnUNetv2_plan_and_preprocess -d {args.dataset} first")
    trainer_class = find_trainer_class(args.tr)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    fold = args.fold if args.fold == "all" else int(args.fold)
    schedule = {"epochs": args.epochs, "iterations_per_epoch": args.iterations,
                "val_iterations_per_epoch": args.val_iterations}
    final = run_stage1(trainer_class, load_json(plans_file), args.configuration, fold,
                       load_json(os.path.join(base, "dataset.json")), torch.device(args.device), args.c, args.val,
                       schedule)
    print(f"stage (i) checkpoint: {final}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
