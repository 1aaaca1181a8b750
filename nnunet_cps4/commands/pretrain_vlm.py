"""Running stage (i): `nnUNetv2_cps4_pretrain_vlm DATASET CONFIG FOLD`, and the same from inside stage (ii).

Trains `nnUNetTrainerCPS4VLM` (or a variant, `-tr`) on the labeled training cases of the fold, validates the
fused map per class on the fold's validation cases, and leaves `checkpoint_final.pth` (with metadata), the log,
progress.png and PNG panels in nnUNet_results/DatasetXXX/<vlm trainer>__<plans>__<config>/fold_<fold>/.
"""
import argparse
import os
from copy import deepcopy
from typing import Optional, Sequence

import torch

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.errors import CPS4Error


def find_trainer_class(name: str):
    """A trainer class by name: the plugin's own first, then nnU-Net's lookup (nnunetv2 + nnUNet_extTrainer)."""
    from nnunet_cps4.nnunet.trainers import registry

    if hasattr(registry, name):
        return getattr(registry, name)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise CPS4Error(f"trainer {name!r} not found in nnunet_cps4 or nnU-Net (nnUNet_extTrainer="
                        f"{os.environ.get('nnUNet_extTrainer', '')}). Fix: check the name") from None


def run_stage1(trainer_class, plans: dict, configuration: str, fold, dataset_json: dict, device: torch.device,
               continue_training: bool = False, validation_only: bool = False,
               epochs: Optional[int] = None, iterations: Optional[int] = None,
               val_iterations: Optional[int] = None) -> str:
    """Train (or resume / only validate) a stage-(i) trainer; return the path of its final checkpoint."""
    plans = deepcopy(plans)
    plans["continue_training"] = continue_training
    trainer = trainer_class(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                            device=device)
    for attribute, value in (("num_epochs", epochs), ("num_iterations_per_epoch", iterations),
                             ("num_val_iterations_per_epoch", val_iterations)):
        if value is not None:
            setattr(trainer, attribute, int(value))
    final = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    if validation_only:
        if not os.path.isfile(final):
            raise CPS4Error(f"{final} not found: stage (i) has not finished. Fix: run it without --val")
        trainer.load_checkpoint(final)
    elif continue_training:
        for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
            path = os.path.join(trainer.output_folder, name)
            if os.path.isfile(path):
                trainer.load_checkpoint(path)
                break
    if not validation_only:
        trainer.run_training()
    trainer.perform_actual_validation()
    return final


def _main(argv: Optional[Sequence[str]] = None) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_cps4.data.layout import require_env_folder, resolve_dataset_name

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
    final = run_stage1(trainer_class, load_json(plans_file), args.configuration, fold,
                       load_json(os.path.join(base, "dataset.json")), torch.device(args.device), args.c, args.val,
                       args.epochs, args.iterations, args.val_iterations)
    print(f"stage (i) checkpoint: {final}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
