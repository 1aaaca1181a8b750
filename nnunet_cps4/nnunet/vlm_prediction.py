"""From VLM maps to label maps on whole images, and `nnUNetv2_cps4_predict_vlm` (fused maps as NIfTI).

Whole images go through nnU-Net's own sliding-window predictor (Gaussian-weighted tiles, same padding as
inference) with the VLM wrapped to emit per-class probabilities; the probability maps of the whole case are then
binarised (Otsu per class by default) and fused (`nnunet_cps4.method.fusion`), and exported with nnU-Net's exporter
(resampling back to the original geometry) — so a fused map lines up with the image exactly as an nnU-Net
prediction would.
"""
import argparse
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.errors import CPS4Error


class VLMProbabilityNetwork(nn.Module):
    """Wraps the VLM for nnU-Net's predictor: outputs (B, C + 1, *S) = [1 - max_c p_c, p_1, ..., p_C]."""

    def __init__(self, vlm: nn.Module):
        super().__init__()
        self.vlm = vlm

    def forward(self, x):
        probs = torch.sigmoid(self.vlm(x).float())
        return torch.cat((1 - probs.max(1, keepdim=True)[0], probs), 1)


def vlm_predictor(vlm: nn.Module, plans_manager, configuration_manager, dataset_json: dict, device: torch.device):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(VLMProbabilityNetwork(vlm).eval(), plans_manager, configuration_manager, None,
                                    dataset_json, "nnUNetTrainerCPS4VLM", None)
    return predictor


@torch.no_grad()
def fused_case_prediction(predictor, data: torch.Tensor, method: str = "otsu", threshold: float = 0.5,
                          min_peak: float = 0.5):
    """(per-class probabilities (C, *S) float32, fused labels (*S) int) for one preprocessed case (c, *S)."""
    from nnunet_cps4.method.fusion import fuse_maps

    probs = predictor.predict_sliding_window_return_logits(data).float().cpu()[1:]
    fused = fuse_maps(probs[None].clamp(0, 1), method, threshold, min_peak)[0]
    return probs.numpy(), fused.numpy()


def _main(argv: Optional[Sequence[str]] = None) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cps4.data.layout import case_identifiers, require_env_folder, resolve_dataset_name
    from nnunet_cps4.method.fusion import labels_to_probabilities
    from nnunet_cps4.nnunet.trainers.vlm_pretraining import load_vlm, vlm_output_folder

    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_predict_vlm",
        description="Write the stage-(i) VLM's fused multi-class maps for a folder of images (nnU-Net naming, "
                    "<case>_0000.nii.gz ...) as label files, to inspect what the VLM sees.")
    parser.add_argument("-i", required=True, help="input folder with images")
    parser.add_argument("-o", required=True, help="output folder (created; existing files of the same name are "
                                                  "overwritten, nothing else is touched)")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("-f", default="0", help="fold of the VLM (default 0)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-tr", default="nnUNetTrainerCPS4VLM", help="stage-(i) trainer (default nnUNetTrainerCPS4VLM)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name")
    parser.add_argument("--binarize", default="otsu", choices=("otsu", "fixed"))
    parser.add_argument("--threshold", type=float, default=0.5, help="threshold for --binarize fixed")
    parser.add_argument("--min-peak", type=float, default=0.5, help="a class whose peak probability is lower "
                                                                    "fires nowhere (Otsu)")
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
    device = torch.device(args.device)
    vlm, metadata = load_vlm(checkpoint, plans_manager, configuration_manager, device)
    predictor = vlm_predictor(vlm, plans_manager, configuration_manager, dataset_json, device)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)

    file_ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    if not os.path.isdir(args.i):
        raise CPS4Error(f"input folder {args.i} does not exist")
    cases = case_identifiers(args.i, file_ending)
    if not cases:
        raise CPS4Error(f"{args.i} holds no <case>_0000{file_ending} image. Fix: use nnU-Net's file naming")
    os.makedirs(args.o, exist_ok=True)
    for case in cases:
        files = [os.path.join(args.i, f"{case}_{c:04d}{file_ending}") for c in range(n_channels)]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CPS4Error(f"{missing[0]} is missing: dataset.json lists {n_channels} channel(s)")
        data, _, properties = preprocessor.run_case(files, None, plans_manager, configuration_manager, dataset_json)
        _, fused = fused_case_prediction(predictor, torch.from_numpy(data), args.binarize, args.threshold,
                                         args.min_peak)
        onehot = labels_to_probabilities(torch.from_numpy(fused)[None], len(metadata["class_names"]) + 1)[0]
        # nnU-Net's exporter resamples "logits" back to the original geometry; one-hot keeps the argmax
        export_prediction_from_logits(onehot * 10, properties, configuration_manager, plans_manager, dataset_json,
                                      os.path.join(args.o, case), False)
        print(f"{case}: fused VLM map written ({len(np.unique(fused)) - 1} class(es) fired)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
