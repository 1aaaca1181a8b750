"""From VLM maps to label maps on whole images: the fused maps of a case, and of a folder of images as label files.

Whole images go through nnU-Net's own sliding-window predictor (Gaussian-weighted tiles, same padding as
inference) with the VLM wrapped to emit per-class probabilities; the probability maps of the whole case are then
binarised and fused by the pseudo-label rule (`nnunet_cps4.method.pseudo_labels`), and exported with nnU-Net's
exporter (resampling back to the original geometry) — so a fused map lines up with the image exactly as an
nnU-Net prediction would.
"""
import os
from typing import List

import numpy as np
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from torch import nn

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.fusion import labels_to_probabilities
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule, with_background


class VLMProbabilityNetwork(nn.Module):
    """Wraps the VLM for nnU-Net's predictor: outputs (B, C + 1, *S) = [1 - max_c p_c, p_1, ..., p_C]."""

    def __init__(self, vlm: nn.Module):
        super().__init__()
        self.vlm = vlm

    def forward(self, x):
        return with_background(torch.sigmoid(self.vlm(x).float()))


def sliding_window_predictor(network: nn.Module, plans_manager, configuration_manager, dataset_json: dict,
                             device: torch.device, trainer_name: str):
    """nnU-Net's predictor around an in-memory network (eval mode, no test-time mirroring), for whole cases."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # heavy: only when predicting

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network.eval(), plans_manager, configuration_manager, None, dataset_json,
                                    trainer_name, None)
    return predictor


def vlm_predictor(vlm: nn.Module, plans_manager, configuration_manager, dataset_json: dict, device: torch.device):
    return sliding_window_predictor(VLMProbabilityNetwork(vlm), plans_manager, configuration_manager, dataset_json,
                                    device, "nnUNetTrainerCPS4VLM")


@torch.no_grad()
def vlm_probabilities(predictor, data: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities (C, *S) float32 on the CPU for one preprocessed case (c, *S)."""
    return predictor.predict_sliding_window_return_logits(data).float().cpu()[1:].clamp(0, 1)


@torch.no_grad()
def fused_case_prediction(predictor, data: torch.Tensor, rule: PseudoLabelRule):
    """(per-class probabilities (C, *S) float32, fused labels (*S) int) for one preprocessed case (c, *S)."""
    probs = vlm_probabilities(predictor, data)
    return probs.numpy(), rule.fuse(probs[None])[0].numpy()


def predict_folder(predictor, images: str, output: str, rule: PseudoLabelRule, num_classes: int, plans_manager,
                   configuration_manager, dataset_json: dict, cases: List[str]) -> None:
    """Write the fused map of every case of `images` (nnU-Net naming) as a label file into `output`.

    num_classes: the VLM's foreground classes."""
    file_ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    os.makedirs(output, exist_ok=True)
    for case in cases:
        files = [os.path.join(images, f"{case}_{c:04d}{file_ending}") for c in range(n_channels)]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CPS4Error(f"{missing[0]} is missing: dataset.json lists {n_channels} channel(s)")
        data, _, properties = preprocessor.run_case(files, None, plans_manager, configuration_manager, dataset_json)
        _, fused = fused_case_prediction(predictor, torch.from_numpy(data), rule)
        onehot = labels_to_probabilities(torch.from_numpy(fused)[None], num_classes + 1)[0]
        # nnU-Net's exporter resamples "logits" back to the original geometry; one-hot keeps the argmax
        export_prediction_from_logits(onehot * 10, properties, configuration_manager, plans_manager, dataset_json,
                                      os.path.join(output, case), False)
        print(f"{case}: fused VLM map written ({len(np.unique(fused)) - 1} class(es) fired)")
