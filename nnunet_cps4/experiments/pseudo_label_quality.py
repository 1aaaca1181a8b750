"""How good are the pseudo labels? Teacher, VLM (y_text) and refined labels of a trained CPS4 model, scored on
unlabeled training cases whose true labels are known (the phantom's `labelsUnlabeledReference/`, or the source
dataset of a benchmark split).

This is an analysis of the training signal, not a test-set number: it reads labels of *training* cases that the
trainer never saw, and never touches the test set. Each case is predicted whole (nnU-Net's sliding-window
predictor, no mirroring) by the checkpoint's teacher and VLM; the refined label is formed by the pseudo-label rule
stored in the checkpoint (`PseudoLabelRule`: fuse, refine) before its confidence cut, so that every pixel has a
label to score.

Where the dataset's prompt file declares a spine order, every source's labels are also relabelled in that order
(`method/spine_order.order_levels`, the whole case in 3D as `nnUNetv2_cps4_order_levels` does, unplaceable
components to background) and scored again: mean Dice, mean HD95 and the fraction of cases with every level
placed (`levels_correctly_placed`), before and after ordering.
"""
import os
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cps4.data.layout import UNLABELED_FOLDER, case_identifiers
from nnunet_cps4.experiments.evaluation import hd95_mm, ratio_summary, volume_ratio
from nnunet_cps4.experiments.variants import trainer_class
from nnunet_cps4.method.metrics import dice
from nnunet_cps4.method.prompts import load_dataset_prompts
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule
from nnunet_cps4.method.spine_order import LevelOrder, levels_correctly_placed, order_levels
from nnunet_cps4.nnunet.checkpoints import EXTRA_STATE_KEY, read_checkpoint, vlm_from_metadata, vlm_metadata_of
from nnunet_cps4.nnunet.vlm_prediction import vlm_predictor, vlm_probabilities


class TrainedSources(NamedTuple):
    """What a trained checkpoint can say about an unlabeled case: its teacher (or network) and its VLM as
    sliding-window predictors (None where it has none), its pseudo-label rule and the nnU-Net objects to read
    cases with."""
    teacher: Optional[object]
    vlm: Optional[object]
    rule: PseudoLabelRule
    plans_manager: PlansManager
    configuration_manager: object
    dataset_json: dict


def trained_sources(model_folder: str, fold, device: torch.device = torch.device("cpu"),
                    checkpoint: str = "checkpoint_final.pth") -> TrainedSources:
    """The teacher and VLM of a checkpoint: a CPS4 checkpoint has both, a mean-teacher one its teacher, a supervised
    one its network (what a teacher would start from), a stage-(i) one its VLM."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # heavy: only when predicting

    ckpt = read_checkpoint(os.path.join(model_folder, f"fold_{fold}", checkpoint))
    state = ckpt.get(EXTRA_STATE_KEY) or {"teacher_weights": ckpt["network_weights"]}
    metadata = vlm_metadata_of(ckpt)
    if "teacher_weights" not in state and metadata is not None:  # stage (i): its network is the VLM
        state = {"vlm_metadata": metadata, "vlm_weights": ckpt["network_weights"],
                 "settings": {"pseudo_label_rule": metadata["pseudo_label_rule"]}}
    plans_manager = PlansManager(os.path.join(model_folder, "plans.json"))
    dataset_json = load_json(os.path.join(model_folder, "dataset.json"))
    configuration_manager = plans_manager.get_configuration(ckpt["init_args"]["configuration"])
    label_manager = plans_manager.get_label_manager(dataset_json)
    teacher_predictor = text_predictor = None
    if "teacher_weights" in state:
        teacher = trainer_class(ckpt["trainer_name"]).build_network_architecture(
            plans_manager, configuration_manager, len(dataset_json["channel_names"]),
            label_manager.num_segmentation_heads, False)
        teacher.load_state_dict(state["teacher_weights"])
        teacher_predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                            perform_everything_on_device=device.type == "cuda", device=device,
                                            verbose=False, allow_tqdm=False)
        teacher_predictor.manual_initialization(teacher.to(device).eval(), plans_manager, configuration_manager,
                                                None, dataset_json, ckpt["trainer_name"], None)
    if "vlm_metadata" in state:  # the VLM exactly as the trainer used it (weights from the checkpoint)
        vlm = vlm_from_metadata(state["vlm_metadata"], state["vlm_weights"], configuration_manager)
        text_predictor = vlm_predictor(vlm.to(device).eval(), plans_manager, configuration_manager, dataset_json,
                                       device)
    return TrainedSources(teacher_predictor, text_predictor, PseudoLabelRule.from_settings(state.get("settings", {})),
                          plans_manager, configuration_manager, dataset_json)


@torch.no_grad()
def pseudo_label_quality(model_folder: str, fold, cases: Dict[str, List[str]], references: Dict[str, str],
                         device: torch.device = torch.device("cpu"), checkpoint: str = "checkpoint_final.pth"
                         ) -> dict:
    """Per-class Dice of teacher, y_text and refined labels against the references, averaged over `cases`.

    A mean-teacher checkpoint (no VLM in its state) is scored on its teacher alone, a supervised nnU-Net
    checkpoint on its network (the reference: how good were these labels without self-training?), a stage-(i)
    VLM checkpoint on its fused map alone (what the VLM would bring to stage (ii)).

    cases: {case id: [raw image files]}; references: {case id: raw label file}. Scores are computed in the
    preprocessed space of the model's configuration (labels resampled like nnU-Net's training labels).
    """
    trained = trained_sources(model_folder, fold, device, checkpoint)
    teacher_predictor, text_predictor, rule = trained.teacher, trained.vlm, trained.rule
    plans_manager, configuration_manager = trained.plans_manager, trained.configuration_manager
    dataset_json = trained.dataset_json
    label_manager = plans_manager.get_label_manager(dataset_json)
    has_teacher, has_vlm = teacher_predictor is not None, text_predictor is not None
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    order = LevelOrder.from_prompts(load_dataset_prompts(dataset_json, plans_manager.dataset_name))
    ordering = _OrderingScores(order) if order is not None else None

    class_ids = list(label_manager.foreground_labels)
    sources = (("teacher", has_teacher), ("text", has_vlm), ("refined", has_vlm and has_teacher))
    kinds = [kind for kind, scored in sources if scored]
    scores = {kind: {c: [] for c in class_ids} for kind in kinds}
    volume = {kind: {} for kind in scores}  # predicted / true foreground pixels: does a source shrink or grow?
    changed, agreement = [], []
    for case, files in sorted(cases.items()):
        data, ref, properties = preprocessor.run_case(files, references[case], plans_manager,
                                                      configuration_manager, dataset_json)
        data = torch.from_numpy(data)
        ref = ref[0]
        labels = {}
        if has_teacher:
            logits = teacher_predictor.predict_sliding_window_return_logits(data).float().cpu()
            labels["teacher"] = logits.argmax(0).numpy()
        if has_vlm:
            probs = vlm_probabilities(text_predictor, data)
            y_text = rule.fuse(probs[None])
            labels["text"] = y_text[0].numpy()
        if has_vlm and has_teacher:
            _, refined = rule.refine(torch.softmax(logits, 0)[None], probs[None], y_text)
            labels["refined"] = refined[0, 0].numpy()
            changed.append(float((labels["refined"] != labels["teacher"]).mean()))
            agreement.append(float((labels["text"] == labels["teacher"]).mean()))
        if ordering is not None:
            ordering.add(labels, ref, _preprocessed_spacing(properties, plans_manager, configuration_manager))
        for kind, lab in labels.items():
            volume[kind][case] = volume_ratio(lab, ref)
            for c in class_ids:
                if (ref == c).any():
                    scores[kind][c].append(dice(lab == c, ref == c))
    names = {v: k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    per_class = {kind: {names[c]: (float(np.mean(v)) if v else float("nan")) for c, v in s.items()}
                 for kind, s in scores.items()}
    result = {"cases": sorted(cases), "per_class_Dice": per_class,
              "mean_Dice": {kind: float(np.nanmean(list(v.values()))) for kind, v in per_class.items()},
              "foreground_volume_ratio": {kind: ratio_summary(v)["median"] for kind, v in volume.items()},
              "notes": "Dice per class over unlabeled training cases where the class is present; whole-image "
                       "predictions of the final checkpoint's teacher (and VLM), refined as in training; "
                       "foreground_volume_ratio: median over cases of predicted / true foreground pixels"}
    result["spine_order"] = ordering.summary() if ordering is not None else None  # None: no order declared
    if changed:
        result.update({"refined_changed_fraction": float(np.mean(changed)),
                       "teacher_text_agreement": float(np.mean(agreement))})
    return result


def _preprocessed_spacing(properties: dict, plans_manager, configuration_manager) -> List[float]:
    """Voxel spacing (mm) of a case in the configuration's preprocessed space (2d: in-plane resampled only)."""
    original = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    target = list(configuration_manager.spacing)
    return original[:len(original) - len(target)] + target


class _OrderingScores:
    """Per source: mean Dice, mean HD95 and every-level-placed, before and after spine ordering."""

    def __init__(self, order: LevelOrder):
        self.order = order
        self.values = {}

    def add(self, labels: Dict[str, np.ndarray], ref: np.ndarray, spacing: List[float]) -> None:
        present = [c for c in self.order.labels if (ref == c).any()]
        for kind, lab in labels.items():
            ordered, _ = order_levels(lab, self.order, spacing=spacing, ignore_value=0)
            for when, pred in (("before", lab), ("after", ordered)):
                entry = self.values.setdefault(kind, {}).setdefault(when, {"Dice": [], "HD95": [], "placed": []})
                entry["Dice"].append(np.mean([dice(pred == c, ref == c) for c in present]) if present else np.nan)
                entry["HD95"].append(np.nanmean([hd95_mm(pred == c, ref == c, spacing) for c in present]
                                                or [np.nan]))
                entry["placed"].append(float(levels_correctly_placed(pred, ref, self.order, spacing)))

    def summary(self) -> dict:
        return {kind: {when: {"mean_Dice": float(np.nanmean(v["Dice"])), "mean_HD95": float(np.nanmean(v["HD95"])),
                              "every_level_placed": float(np.mean(v["placed"]))}
                       for when, v in whens.items()}
                for kind, whens in self.values.items()}


def unlabeled_cases_with_references(split_dataset: str, reference_labels_folder: str, file_ending: str,
                                    n_channels: int, limit: Optional[int] = None):
    """({case: [image files]}, {case: label file}) for the unlabeled cases of a dataset that have a reference."""
    folder = os.path.join(split_dataset, UNLABELED_FOLDER)
    cases, refs = {}, {}
    for case in case_identifiers(folder, file_ending):
        ref = os.path.join(reference_labels_folder, case + file_ending)
        if os.path.isfile(ref):
            cases[case] = [os.path.join(folder, f"{case}_{c:04d}{file_ending}") for c in range(n_channels)]
            refs[case] = ref
        if limit and len(cases) >= limit:
            break
    return cases, refs
