"""The frozen VLM's vote on every unlabeled case, computed once before stage (ii) and carried by nnU-Net's loader.

Why: in stage (ii) the VLM is frozen, so its maps of an unlabeled case never change; a pretrained image encoder
(LiteMedSAM: about 1 s per slice on a CPU core) would otherwise run on every unlabeled batch.

What is stored: of the VLM's per-class probabilities the pseudo-label rule uses only the fused label y_text and
the vote for it (`pseudo_labels.text_vote`: p_k of the fused class k, 1 - max_c p_c for background). Both are
packed into one int16 code per voxel, code = k + (C + 1) * round(vote * VOTE_STEPS), so the vote is kept to
1 / VOTE_STEPS (0.1) — the rule compares it with the teacher's softmax and a 0.9 confidence cut, where a
quantisation error of at most 0.05 moves few pixels. Each case is predicted whole, as `nnUNetv2_cps4_predict_vlm`
does (nnU-Net's sliding-window predictor, no mirroring).

How the maps follow the augmentation: the codes are written as nnU-Net's "segmentation from the previous stage"
(the cascade's per-case file, written with the dataset class's own `save_seg`) and the unlabeled dataset is opened
with `folder_with_segs_from_previous_stage`, so nnU-Net's data loader crops them with the image and appends them
as a second segmentation channel before the transforms: rotation, scaling and mirroring move them exactly like
label maps (label-wise resampling, no interpolation between codes; padding becomes code 0 = background with no
vote). What differs from maps computed on the batch: the VLM saw the un-augmented image (no intensity augmentation)
and the whole case instead of the patch.

Validity: `manifest.json` beside the codes records a fingerprint of the VLM (metadata, weights), the rule and the
cases; anything else rebuilds the folder, so a resumed run reuses it and a changed VLM never meets stale maps.
"""
import hashlib
import json
import os
import shutil
from typing import List, Tuple

import numpy as np
import torch

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.fusion import labels_to_probabilities
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule, text_vote
from nnunet_cps4.nnunet.vlm_prediction import vlm_predictor, vlm_probabilities

VOTE_STEPS = 10
MANIFEST = "manifest.json"
CODE_DTYPE = np.int16


def _check_capacity(num_classes: int) -> None:
    if (num_classes + 1) * (VOTE_STEPS + 1) > np.iinfo(CODE_DTYPE).max:
        raise CPS4Error(f"{num_classes} classes do not fit the stored VLM votes ({VOTE_STEPS + 1} vote levels per "
                        f"class in int16). Fix: set precompute_vlm_maps = False on the trainer (maps on each batch)")


def encode_vote(y_text: torch.Tensor, vote: torch.Tensor, num_classes: int) -> np.ndarray:
    """y_text (*S) labels 0..C and vote (C + 1, *S) (one non-zero entry per voxel) -> int16 codes (*S)."""
    _check_capacity(num_classes)
    strength = vote.gather(0, y_text.long().unsqueeze(0))[0].clamp(0, 1)
    q = torch.round(strength * VOTE_STEPS).long()
    return (y_text.long() + (num_classes + 1) * q).numpy().astype(CODE_DTYPE)


def decode_vote(codes: torch.Tensor, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """int codes (B, *S) -> (y_text (B, *S) long, vote (B, C + 1, *S) float): the inverse of `encode_vote`."""
    codes = codes.long().clamp_min(0)
    y_text = codes % (num_classes + 1)
    strength = (codes // (num_classes + 1)).float() / VOTE_STEPS
    return y_text, labels_to_probabilities(y_text, num_classes + 1) * strength.unsqueeze(1)


def fingerprint(vlm: torch.nn.Module, metadata: dict, rule: PseudoLabelRule, cases: List[str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"metadata": metadata, "rule": rule.to_dict(), "cases": sorted(cases),
                              "vote_steps": VOTE_STEPS}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vlm.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def ensure_vlm_maps(vlm: torch.nn.Module, metadata: dict, rule: PseudoLabelRule, unlabeled_folder: str,
                    out_folder: str, dataset_class, plans_manager, configuration_manager, dataset_json: dict,
                    device: torch.device, log=print) -> str:
    """`out_folder` holding the VLM's codes of every case of `unlabeled_folder` (rebuilt unless its manifest
    matches this VLM, rule and case list)."""
    dataset = dataset_class(unlabeled_folder)
    cases = sorted(dataset.identifiers)
    num_classes = len(metadata["class_names"])
    _check_capacity(num_classes)
    key = fingerprint(vlm, metadata, rule, cases)
    manifest = os.path.join(out_folder, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            if json.load(f).get("fingerprint") == key:
                log(f"VLM maps of {len(cases)} unlabeled case(s) reused from {out_folder}")
                return out_folder
    if os.path.isdir(out_folder):
        shutil.rmtree(out_folder)  # ours (the trainer's fold folder), stale: another VLM, rule or case list
    tmp = out_folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    predictor = vlm_predictor(vlm, plans_manager, configuration_manager, dataset_json, device)
    for i, case in enumerate(cases):
        data = torch.from_numpy(np.asarray(dataset.load_case(case)[0][:])).float()
        probs = vlm_probabilities(predictor, data)
        y_text = rule.fuse(probs[None])
        codes = encode_vote(y_text[0], text_vote(y_text, probs[None])[0], num_classes)
        dataset_class.save_seg(codes, os.path.join(tmp, case))
        if (i + 1) % 10 == 0 or i + 1 == len(cases):
            log(f"VLM maps: {i + 1}/{len(cases)} unlabeled cases")
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump({"fingerprint": key, "cases": cases, "vote_steps": VOTE_STEPS}, f, indent=1)
    os.replace(tmp, out_folder)
    return out_folder
