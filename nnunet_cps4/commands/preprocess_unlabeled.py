"""`nnUNetv2_cps4_preprocess_unlabeled -d DATASET [-c CONFIG ...]`: check and preprocess imagesUnlabeled/.

Argument parsing only; the work is `nnunet_cps4.nnunet.unlabeled.preprocess_unlabeled`.
"""
import argparse
import os
from typing import Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import UNLABELED_FOLDER, require_env_folder, resolve_dataset_name
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.nnunet.unlabeled import preprocess_unlabeled


def _main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_preprocess_unlabeled",
        description=f"Check and preprocess nnUNet_raw/DatasetXXX/{UNLABELED_FOLDER}/ with the plans' own "
                    f"preprocessor into nnUNet_preprocessed/DatasetXXX/<plans>_<configuration>_unlabeled/. Run "
                    f"after nnUNetv2_plan_and_preprocess; semi-supervised trainers also run it at start when "
                    f"needed. Only new or changed images are processed; an interrupted run is completed by the "
                    f"next one. The raw data is only read.")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", nargs="+", default=["2d"], help="configuration(s), default 2d")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier, default nnUNetPlans")
    parser.add_argument("-np", type=int, default=int(os.environ.get("nnUNet_def_n_proc", 2)),
                        help="number of processes (default $nnUNet_def_n_proc or 2)")
    args = parser.parse_args(argv)

    name = resolve_dataset_name(args.d)
    preprocessed_base = os.path.join(require_env_folder("nnUNet_preprocessed"), name)
    plans_file = os.path.join(preprocessed_base, args.p + ".json")
    if not os.path.isfile(plans_file):
        raise CPS4Error(f"{plans_file} not found. Fix: run nnUNetv2_plan_and_preprocess -d {args.d} first "
                        f"(or pass the right plans identifier with -p)")
    plans_manager = PlansManager(plans_file)
    dataset_json = load_json(os.path.join(preprocessed_base, "dataset.json"))
    raw_dataset_folder = os.path.join(require_env_folder("nnUNet_raw"), name)
    for configuration in args.c:
        if configuration not in plans_manager.available_configurations:
            raise CPS4Error(f"configuration {configuration!r} is not in {plans_file} "
                            f"(available: {plans_manager.available_configurations}). Fix: choose one of those")
        out = preprocess_unlabeled(plans_manager, plans_manager.get_configuration(configuration), configuration,
                                   dataset_json, raw_dataset_folder, preprocessed_base, args.np)
        print(f"{configuration}: unlabeled images ready in {out}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
