"""`nnUNetv2_cps4_predict_vlm`: the stage-(i) VLM's fused multi-class maps of a folder of images, as label files."""
import argparse
import os
from typing import Optional, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import case_identifiers, require_env_folder, resolve_dataset_name
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.fusion import BINARIZE_METHODS
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule
from nnunet_cps4.nnunet.checkpoints import load_vlm, vlm_output_folder
from nnunet_cps4.nnunet.vlm_prediction import predict_folder, vlm_predictor


def _main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_predict_vlm",
        description="Write the stage-(i) VLM's fused multi-class maps for a folder of images (nnU-Net naming, "
                    "<case>_0000.nii.gz ...) as label files, to inspect what the VLM sees. Binarisation and "
                    "fusion follow the pseudo-label rule stored with the VLM unless overridden here.")
    parser.add_argument("-i", required=True, help="input folder with images")
    parser.add_argument("-o", required=True, help="output folder (created; existing files of the same name are "
                                                  "overwritten, nothing else is touched)")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("-f", default="0", help="fold of the VLM (default 0)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-tr", default="nnUNetTrainerCPS4VLM", help="stage-(i) trainer (default nnUNetTrainerCPS4VLM)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name")
    parser.add_argument("--binarize", choices=BINARIZE_METHODS, help="override the rule's binarisation")
    parser.add_argument("--threshold", type=float, help="threshold for --binarize fixed")
    parser.add_argument("--min-peak", type=float, help="a class whose peak probability is lower fires nowhere "
                                                       "(Otsu)")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    name = resolve_dataset_name(args.d)
    model_folder = os.path.join(require_env_folder("nnUNet_results"), name, f"{args.tr}__{args.p}__{args.c}")
    plans_file, dataset_json_file = (os.path.join(model_folder, f) for f in ("plans.json", "dataset.json"))
    if not os.path.isfile(plans_file):
        raise CPS4Error(f"{plans_file} not found: no stage-(i) training of {name} ({args.tr}, {args.c}). Fix: run "
                        f"nnUNetv2_cps4_pretrain_vlm {args.d} {args.c} {args.f}")
    plans_manager = PlansManager(plans_file)
    configuration_manager = plans_manager.get_configuration(args.c)
    dataset_json = load_json(dataset_json_file)
    fold = args.f if args.f == "all" else int(args.f)
    checkpoint = os.path.join(vlm_output_folder(args.tr, plans_manager, args.c, fold), args.chk)
    if not os.path.isfile(checkpoint):
        raise CPS4Error(f"{checkpoint} not found. Fix: finish stage (i) for fold {args.f} or pass -f/-chk")
    if not os.path.isdir(args.i):
        raise CPS4Error(f"input folder {args.i} does not exist")
    cases = case_identifiers(args.i, dataset_json["file_ending"])
    if not cases:
        raise CPS4Error(f"{args.i} holds no <case>_0000{dataset_json['file_ending']} image. Fix: use nnU-Net's file "
                        f"naming")
    device = torch.device(args.device)
    vlm, metadata = load_vlm(checkpoint, configuration_manager, device)
    rule = PseudoLabelRule.from_settings(metadata)
    overrides = {"binarize_method": args.binarize, "fixed_threshold": args.threshold, "min_peak": args.min_peak}
    rule = rule.with_settings(**{k: v for k, v in overrides.items() if v is not None})
    predictor = vlm_predictor(vlm, plans_manager, configuration_manager, dataset_json, device)
    predict_folder(predictor, args.i, args.o, rule, len(metadata["class_names"]), plans_manager,
                   configuration_manager, dataset_json, cases)


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
