"""How much can LiteMedSAM's frozen features give the VLM? A diagnostic for the "medsam" vision branch.

Stage (i) with the pretrained encoder runs the encoder on every augmented batch (about 1.2 s per slice on 2 CPU
cores), so on a CPU it cannot be trained as long as the scratch branches. This probe removes that limit: the
encoder's features of every whole slice are computed once (no augmentation) and the branch's trainable parts — the
`MedSAMDecoder`, the text projection, temperature and bias of `ClassPromptVLM` — are trained on them with the
stage-(i) attention loss (nnU-Net's SGD settings, poly schedule, batch 2 slices) for as many iterations as the
scratch VLM gets. Its fused maps (the pseudo-label rule's Otsu + fusion) are then scored per case:

- level Dice: mean over the classes present of the Dice per class (the pseudo-label analysis' number);
- vertebra/disc Dice (with a spine order): all vertebra classes as one, all disc classes as one — is the
  structure found, whatever its level?
- after ordering: the fused map relabelled by `order_levels` (the case in 3D).

Without augmentation this favours the probe on the labeled cases; what it measures is how good frozen features
plus the small decoder can get on unseen cases, an upper bound for the live stage (i) at equal iterations.

    python -m nnunet_cps4.experiments.frozen_encoder_probe -i RAW_SPLIT -r REFERENCE_LABELS -p PLANS.json \
        [--test RAW_SOURCE] [--iterations 2500] [-o result.json]

RAW_SPLIT: a raw dataset with imagesTr/labelsTr (the labeled cases) and imagesUnlabeled; REFERENCE_LABELS: a
folder with the true labels of (some of) its unlabeled cases (the phantom's labelsUnlabeledReference, or a
benchmark source's labelsTr); --test: a raw dataset whose imagesTs/labelsTs are scored too.
"""
import argparse
import json
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cps4.data.layout import UNLABELED_FOLDER, case_identifiers
from nnunet_cps4.method.attention_losses import AttentionLoss
from nnunet_cps4.method.medsam_encoder import MedSAMDense, to_encoder_input
from nnunet_cps4.method.metrics import dice
from nnunet_cps4.method.prompts import load_dataset_prompts
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule, with_background
from nnunet_cps4.method.spine_order import LevelOrder, order_levels
from nnunet_cps4.method.text_encoders import build_text_encoder, class_text_embeddings
from nnunet_cps4.method.vlm import ClassPromptVLM, VLMConfig

Case = Tuple[str, torch.Tensor, torch.Tensor]  # id, preprocessed image (c, *S), labels (*S)


def _load(preprocessor, images: str, labels: str, cases: List[str], plans_manager, configuration_manager,
          dataset_json: dict) -> List[Case]:
    fe, n = dataset_json["file_ending"], len(dataset_json["channel_names"])
    out = []
    for case in cases:
        data, seg, _ = preprocessor.run_case([os.path.join(images, f"{case}_{c:04d}{fe}") for c in range(n)],
                                             os.path.join(labels, case + fe), plans_manager, configuration_manager,
                                             dataset_json)
        out.append((case, torch.from_numpy(data).float(), torch.from_numpy(seg[0]).long()))
    return out


class _Probe:
    def __init__(self, vlm: ClassPromptVLM, rule: PseudoLabelRule, order: Optional[LevelOrder], spine_axis: int):
        self.vlm, self.rule, self.order, self.spine_axis = vlm, rule, order, spine_axis
        self.features: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def encode(self, cases: List[Case]) -> None:
        """Encoder features (slices, 256, 64, 64) and the mapped input of every slice of each 2d case."""
        vision = self.vlm.vision
        for case, data, _ in cases:
            slices = data.permute(1, 0, *range(2, data.ndim))  # (slices, c, H, W)
            encoder_input, image = to_encoder_input(slices)
            features = vision.encoder(encoder_input)
            self.features[case] = (features.reshape(slices.shape[0], -1, *features.shape[2:]), image)

    def similarities(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """ClassPromptVLM.forward on cached encoder features."""
        return self.vlm.similarities(self.vlm.vision.decoder(features, image))

    def train(self, labeled: List[Case], iterations: int, seed: int, log=print) -> None:
        rng = np.random.default_rng(seed)
        slices = [(case, i) for case, data, _ in labeled for i in range(data.shape[1])]
        labels = {case: seg for case, _, seg in labeled}
        loss_fn = AttentionLoss(1.0, 1.0, "log")
        params = [p for p in self.vlm.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        start = time.perf_counter()
        self.vlm.train()
        for it in range(iterations):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 * (1 - it / iterations) ** 0.9
            pick = [slices[j] for j in rng.integers(len(slices), size=2)]
            features = torch.stack([self.features[c][0][i] for c, i in pick])
            image = torch.stack([self.features[c][1][i] for c, i in pick])
            target = torch.stack([labels[c][i] for c, i in pick])[:, None]
            loss, _ = loss_fn(self.similarities(features, image), target)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 12)
            optimizer.step()
            if (it + 1) % max(1, iterations // 5) == 0:
                log(f"iteration {it + 1}/{iterations}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
        self.vlm.eval()

    @torch.no_grad()
    def score(self, cases: List[Case]) -> dict:
        level, structure, ordered = [], [], []
        classes = range(1, self.vlm.num_classes + 1)
        for case, _, ref in cases:
            probs = torch.sigmoid(self.similarities(*self.features[case]))  # (slices, C, H, W)
            fused = self.rule.fuse(probs)
            level.append(_mean_dice(fused, ref, classes))
            if self.order is not None:
                kinds = [[k for k in self.order.labels if k not in self.order.discs], sorted(self.order.discs)]
                structure.append(np.mean([dice(torch.isin(fused, torch.tensor(k)), torch.isin(ref, torch.tensor(k)))
                                          for k in kinds]))
                relabelled, _ = order_levels(fused.numpy(), self.order, spine_axis=self.spine_axis, ignore_value=0,
                                             probabilities=with_background(probs).transpose(0, 1).numpy())
                ordered.append(_mean_dice(torch.from_numpy(relabelled), ref, classes))
        result = {"cases": len(cases), "level_Dice": float(np.mean(level))}
        if self.order is not None:
            result.update(vertebra_disc_Dice=float(np.mean(structure)), level_Dice_after_ordering=float(np.mean(ordered)))
        return result


def _mean_dice(pred: torch.Tensor, ref: torch.Tensor, classes) -> float:
    return float(np.mean([dice(pred == c, ref == c) for c in classes if (ref == c).any()]))


def run_probe(split_dataset: str, reference_labels: str, plans_file: str, test_dataset: Optional[str] = None,
              iterations: int = 2500, seed: int = 0, limit: int = 10, log=print) -> dict:
    torch.manual_seed(seed)
    plans_manager = PlansManager(plans_file)
    configuration_manager = plans_manager.get_configuration("2d")
    dataset_json = load_json(os.path.join(split_dataset, "dataset.json"))
    fe = dataset_json["file_ending"]
    preprocessor = configuration_manager.preprocessor_class(verbose=False)

    def load(images, labels, cases):
        return _load(preprocessor, images, labels, cases, plans_manager, configuration_manager, dataset_json)

    groups = {"labeled": load(os.path.join(split_dataset, "imagesTr"), os.path.join(split_dataset, "labelsTr"),
                              case_identifiers(os.path.join(split_dataset, "imagesTr"), fe))}
    unlabeled = [c for c in case_identifiers(os.path.join(split_dataset, UNLABELED_FOLDER), fe)
                 if os.path.isfile(os.path.join(reference_labels, c + fe))][:limit]
    groups["unlabeled"] = load(os.path.join(split_dataset, UNLABELED_FOLDER), reference_labels, unlabeled)
    if test_dataset:
        groups["test"] = load(os.path.join(test_dataset, "imagesTs"), os.path.join(test_dataset, "labelsTs"),
                              case_identifiers(os.path.join(test_dataset, "imagesTs"), fe))
    prompts = load_dataset_prompts(dataset_json, os.path.basename(split_dataset))
    text = class_text_embeddings(prompts, build_text_encoder(None))
    config = VLMConfig(vision="medsam")
    vlm = ClassPromptVLM(MedSAMDense(len(dataset_json["channel_names"]), config.embed_dim), text, config)
    # the phantom's slices are (SI, AP): the spine runs along the first in-plane axis, axis 1 of (slices, SI, AP)
    probe = _Probe(vlm, PseudoLabelRule(), LevelOrder.from_prompts(prompts), spine_axis=1)
    start = time.perf_counter()
    for cases in groups.values():
        probe.encode(cases)
    encode_seconds = time.perf_counter() - start
    log(f"encoded {sum(len(c) for c in groups.values())} cases in {encode_seconds:.0f} s")
    start = time.perf_counter()
    probe.train(groups["labeled"], iterations, seed, log)
    result = {"iterations": iterations, "encode_seconds": encode_seconds,
              "train_seconds": time.perf_counter() - start,
              **{name: probe.score(cases) for name, cases in groups.items()}}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-i", required=True, help="raw dataset: imagesTr/labelsTr and imagesUnlabeled")
    parser.add_argument("-r", required=True, help="folder with true labels of unlabeled cases")
    parser.add_argument("-p", required=True, help="the dataset's nnU-Net plans file (2d configuration)")
    parser.add_argument("--test", help="raw dataset whose imagesTs/labelsTs are scored too")
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = run_probe(args.i, args.r, args.p, args.test, args.iterations, args.seed)
    print(json.dumps(result, indent=1))
    if args.o:
        with open(args.o, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
