"""`nnUNetTrainerCPS4`: CPS4 stage (ii) — the mean teacher with pseudo labels refined by the class-prompt VLM.

For every unlabeled batch (the same augmented batch the student sees, so the maps follow its spatial
augmentation by construction; with a pretrained-encoder VLM the maps are instead computed once per unlabeled case
and travel with the batch through nnU-Net's loader and augmentation, `nnunet_cps4.nnunet.vlm_map_cache`) the
pseudo-label rule (`nnunet_cps4.method.pseudo_labels.PseudoLabelRule`) runs:
  1. the frozen stage-(i) VLM gives per-class probability maps p_c = sigmoid(s_c), binarised (Otsu per image
     and class by default) and fused into one label map y_text;
  2. the combined pseudo label is argmax(softmax(teacher) + w * VLM vote): where the VLM is confident it
     decides, where it is unsure a confident teacher wins (reconstruction of the predecessor code's
     argmax(softmax(teacher) + text probs)); pixels whose normalised vote is below the rule's confidence
     threshold are left unsupervised;
  3. loss = supervised + lambda(t) * [text_loss_weight * L(student, y_text)
                                      + combined_loss_weight * L(student, combined)],
     L = nnU-Net's Dice+CE with deep supervision and an ignore value (pixels where no class map fires are
     unsupervised in L(student, y_text)), lambda(t) the mean teacher's ramp after its labeled-only warm-up.
     Defaults (chosen on the pseudo labels' quality on unlabeled cases, docs/BENCHMARKS.md "The paper's regime"):
     text_loss_weight 0 and `silent_defers`, i.e. the VLM acts as a veto on the teacher's pseudo labels; the
     paper's form (L(student, y_text) weighted 1, no warm-up, CE alone) is the benchmark variant cps4_paper.

Stage (i) runs first when the fold has no VLM checkpoint (`vlm_trainer_class` is the stage-(i) trainer, so
ablations such as `_noTokenLoss` use a VLM trained without that loss); an existing checkpoint is checked against
this run's dataset, plans, fold, classes, prompts and text encoder. The unlabeled images are checked and
preprocessed before stage (i), so a bad dataset fails before an hour of VLM training. The VLM's weights and
metadata are copied into every CPS4 checkpoint, so `--c` resumes with the identical VLM. Inference uses the
student alone: the stock predictor, no overhead.
"""
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from torch import distributed as dist

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.metrics import dice
from nnunet_cps4.method.prompts import load_dataset_prompts
from nnunet_cps4.method.fusion import labels_to_probabilities
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule, text_vote, with_background
from nnunet_cps4.method.text_encoders import resolve_text_encoder_spec
from nnunet_cps4.nnunet.checkpoints import check_vlm_metadata, load_vlm, vlm_from_metadata, vlm_output_folder
from nnunet_cps4.nnunet.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_cps4.nnunet.unlabeled import unlabeled_folder_name
from nnunet_cps4.nnunet.vlm_map_cache import decode_vote, ensure_vlm_maps
from nnunet_cps4.nnunet.trainers.vlm_pretraining import (nnUNetTrainerCPS4VLM, nnUNetTrainerCPS4VLM_noPixelLoss,
                                                         nnUNetTrainerCPS4VLM_noTokenLoss,
                                                         nnUNetTrainerCPS4VLM_randomText, run_stage1)


class nnUNetTrainerCPS4(nnUNetTrainerMeanTeacher):
    # --- CPS4 settings; variants override these class attributes ------------------------------------------
    vlm_trainer_class: type = nnUNetTrainerCPS4VLM
    use_text: bool = True                  # False: plain mean teacher (the _noText ablation)
    # weight of L(student, y_text). 0 by default since 2026-12-02: that loss supervises only the pixels where a
    # VLM map fires, never background, and grew the spine (teacher's foreground volume 1.19x on unlabeled cases,
    # docs/BENCHMARKS.md "The paper's regime"); the VLM then acts through the refined label alone, as a veto
    # (pseudo_label_rule.silent_defers). The paper's form is the benchmark variant cps4_paper
    text_loss_weight: float = 0.0
    combined_loss_weight: float = 1.0      # weight of L(student, combined pseudo label)
    # where no VLM map fires the teacher's label and confidence stand; where one fires and disagrees, the vote
    # decides or the pixel drops below the confidence cut
    pseudo_label_rule: PseudoLabelRule = PseudoLabelRule(silent_defers=True)
    # spine ordering of the teacher's labels and the VLM's votes: on by default on spine datasets (inherited from
    # the mean teacher) since 2026-12-04. Phantom seed 10, three splits, rule written before the run: the ordered
    # final teacher's labels of unlabeled cases -1.0 / +1.5 / +2.0 (+0.8) against the unordered CPS4's (seed 9, one
    # split: -1.3); docs/BENCHMARKS.md "CPS4 with ordering". The row cps4_wholeCase is CPS4 without it
    labeled_stats_every: int = 5           # VLM Dice on the labeled batch every N steps (costs a VLM pass;
    #                                        not measured when the maps are precomputed)
    # the frozen VLM's votes on the unlabeled cases computed once before training and carried through nnU-Net's
    # loader (`nnunet_cps4.nnunet.vlm_map_cache`) instead of a VLM pass per batch; None: when the VLM's vision
    # branch is the pretrained "medsam" encoder (about 1 s per slice on a CPU core)
    precompute_vlm_maps: Optional[bool] = None
    panel_every: int = 10                  # PNG panels of unlabeled cases every N epochs (and the last)
    num_panel_cases: int = 3
    ssl_log_keys = nnUNetTrainerMeanTeacher.ssl_log_keys + (
        "teacher_text_agreement", "refined_fraction", "text_fired_fraction", "vlm_dice_labeled")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.vlm = None
        self.vlm_metadata: Optional[dict] = None
        self.vlm_maps_folder: Optional[str] = None
        self._restored_vlm_state: Optional[dict] = None

    def ssl_settings(self) -> dict:
        return {**super().ssl_settings(), "vlm_trainer": self.vlm_trainer_class.__name__,
                **{k: getattr(self, k) for k in ("use_text", "text_loss_weight", "combined_loss_weight")}}

    # --- the VLM -------------------------------------------------------------------------------------------
    def expected_vlm_metadata(self) -> dict:
        """What a usable stage-(i) checkpoint must say about itself (checkpoints.METADATA_MUST_MATCH)."""
        prompts = load_dataset_prompts(self.dataset_json, self.plans_manager.dataset_name)
        return {"vlm_trainer": self.vlm_trainer_class.__name__, "dataset": self.plans_manager.dataset_name,
                "plans": self.plans_manager.plans_name, "configuration": self.configuration_name,
                "fold": self.fold, "class_names": prompts.class_names, "label_ids": prompts.label_ids,
                "prompt_fingerprint": prompts.fingerprint(),
                "text_encoder": resolve_text_encoder_spec(self.vlm_trainer_class.text_encoder_spec)[0]}

    def ensure_vlm(self) -> None:
        """Build the frozen VLM: from a resumed CPS4 checkpoint, else from stage (i) (run first if missing)."""
        if self.vlm is not None or not self.use_text:
            return
        if self._restored_vlm_state is not None:
            self.vlm_metadata = self._restored_vlm_state["vlm_metadata"]
            self.vlm = vlm_from_metadata(self.vlm_metadata, self._restored_vlm_state["vlm_weights"],
                                         self.configuration_manager).to(self.device)
        else:
            folder = vlm_output_folder(self.vlm_trainer_class.__name__, self.plans_manager,
                                       self.configuration_name, self.fold)
            checkpoint = os.path.join(folder, "checkpoint_final.pth")
            expected = self.expected_vlm_metadata()
            if not os.path.isfile(checkpoint):
                self.print_to_log_file(f"No stage-(i) VLM in {folder}: training it now "
                                       f"({self.vlm_trainer_class.__name__})")
                run_stage1(self.vlm_trainer_class, self.plans_manager.plans, self.configuration_name, self.fold,
                           self.dataset_json, self.device)
                if self.is_ddp:
                    dist.barrier()
            self.vlm, self.vlm_metadata = load_vlm(checkpoint, self.configuration_manager, self.device, expected)
            self.print_to_log_file(f"Stage-(i) VLM loaded from {checkpoint}")
        self.vlm.requires_grad_(False)
        self.vlm.eval()

    def prepare_semi_supervised(self) -> None:
        if self.whole_case_teacher_labels and self.use_text and self.text_loss_weight != 0:
            raise CPS4Error(f"{self.__class__.__name__}: whole_case_teacher_labels stores one pseudo label per "
                            f"case, but text_loss_weight = {self.text_loss_weight} asks for a second one "
                            f"(L(student, y_text)). Fix: set text_loss_weight = 0 or whole_case_teacher_labels = "
                            f"False")
        super().prepare_semi_supervised()  # fold and unlabeled images first: they fail fast, stage (i) does not
        self.ensure_vlm()
        if self.use_text and self.uses_precomputed_maps():
            folder = os.path.join(self.output_folder, "vlm_maps")
            if self.local_rank == 0:
                unlabeled = os.path.join(self.preprocessed_dataset_folder_base,
                                         unlabeled_folder_name(self.configuration_manager.data_identifier))
                ensure_vlm_maps(self.vlm, self.vlm_metadata, self.pseudo_label_rule, unlabeled, folder,
                                self.dataset_class, self.plans_manager, self.configuration_manager,
                                self.dataset_json, self.device, log=self.print_to_log_file)
            if self.is_ddp:
                dist.barrier()
            self.vlm_maps_folder = folder

    def uses_precomputed_maps(self) -> bool:
        if self.whole_case_teacher_labels:
            return True  # whole cases are labelled with the stored votes (`whole_case_maps_folder`)
        if self.precompute_vlm_maps is not None:
            return bool(self.precompute_vlm_maps)
        return (self.vlm_metadata or {}).get("vlm_config", {}).get("vision") == "medsam"

    def unlabeled_maps_folder(self) -> Optional[str]:
        # whole-case teacher labels already hold the VLM's refinement; without them the loader carries the votes
        return super().unlabeled_maps_folder() if self.whole_case_teacher_labels else self.vlm_maps_folder

    def whole_case_maps_folder(self) -> Optional[str]:
        return self.vlm_maps_folder if self.use_text else None

    # --- pseudo labels -------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_labels(self, data: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-class probabilities (B, C, *S), fused y_text (B, *S)) of the VLM for a batch."""
        probs = self.vlm.probabilities(data)
        return probs, self.pseudo_label_rule.fuse(probs)

    @torch.no_grad()
    def text_vote(self, unlabeled_data: torch.Tensor, unlabeled_target: Optional[torch.Tensor]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(y_text (B, *S), the VLM's vote (B, C + 1, *S)) for an unlabeled batch, in spine order when the
        trainer orders pseudo labels: decoded from the stored maps that came with it, or from a VLM pass."""
        ignore = self.pseudo_ignore_label
        if self.vlm_maps_folder is not None and unlabeled_target is not None:
            y_text, vote = decode_vote(unlabeled_target[:, -1].to(self.device), self.vlm.num_classes)
            if self.level_order is None:
                return y_text, vote
            # each pixel's vote carries its fused class's probability: the ordering's anchor; a relabelled pixel
            # keeps its strength, an unplaced one becomes background with 1 - strength (as 1 - max_c p_c)
            strength = vote.sum(1, keepdim=True)
            y_text = self.ordered_levels(y_text.unsqueeze(1), vote)
            unplaced = y_text == ignore
            y_text = torch.where(unplaced, torch.zeros_like(y_text), y_text)[:, 0]
            strength = torch.where(unplaced, 1 - strength, strength)
            return y_text, labels_to_probabilities(y_text, vote.shape[1]) * strength
        probs, y_text = self.text_labels(unlabeled_data)
        if self.level_order is not None:  # the VLM's map in spine order before it is compared with the teacher
            y_text = self.ordered_levels(y_text.unsqueeze(1), with_background(probs))[:, 0]
            y_text = torch.where(y_text == ignore, torch.zeros_like(y_text), y_text)  # unplaced: no VLM vote
        return y_text, text_vote(y_text, probs)

    @torch.no_grad()
    def make_pseudo_labels(self, unlabeled_data: torch.Tensor, teacher_logits: torch.Tensor,
                           unlabeled_target: Optional[torch.Tensor] = None
                           ) -> Tuple[Dict[str, Tuple[float, torch.Tensor]], Dict[str, float]]:
        if not self.use_text:
            return super().make_pseudo_labels(unlabeled_data, teacher_logits)
        rule, ignore = self.pseudo_label_rule, self.pseudo_ignore_label
        teacher_probs = torch.softmax(teacher_logits.float(), 1)
        teacher_confidence, teacher_labels = teacher_probs.max(1, keepdim=True)
        y_text, vote = self.text_vote(unlabeled_data, unlabeled_target)
        vote, combined = rule.refine_with_vote(teacher_probs, vote, y_text)
        combined = rule.confident(self.ordered_levels(combined, teacher_probs), vote, ignore)
        stats = {"teacher_confidence": teacher_confidence.mean().item(),
                 "teacher_text_agreement": (teacher_labels == y_text.unsqueeze(1)).float().mean().item(),
                 "refined_fraction": ((combined != teacher_labels) & (combined != ignore)).float().mean().item(),
                 "text_fired_fraction": (y_text > 0).float().mean().item(),
                 "pseudo_label_ignored": (combined == ignore).float().mean().item()}
        return {"text": (self.text_loss_weight, rule.text_target(y_text, ignore)),
                "combined": (self.combined_loss_weight, combined)}, stats

    @torch.no_grad()
    def labeled_batch_stats(self, data: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
        """Mean Dice of y_text on the labeled batch over the classes present (every labeled_stats_every steps)."""
        if not self.use_text or self.vlm_maps_folder is not None or \
                self.global_step % max(1, self.labeled_stats_every) != 0:
            return {"vlm_dice_labeled": float("nan")}
        _, y_text = self.text_labels(data)
        target = target[:, 0]
        dices = [dice(y_text == c, target == c) for c in torch.unique(target) if c > 0]
        return {"vlm_dice_labeled": float(np.mean(dices)) if dices else float("nan")}

    # --- what the user sees: panels of unlabeled cases -----------------------------------------------------
    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        last = epoch == self.num_epochs - 1
        if self.local_rank == 0 and self.use_text and (last or (epoch + 1) % max(1, self.panel_every) == 0):
            self.save_pseudo_label_panels(epoch)

    @torch.no_grad()
    def save_pseudo_label_panels(self, epoch: int) -> None:
        """image | teacher label | y_text | refined label for the first unlabeled cases (centre patch)."""
        from nnunet_cps4.plots import save_pseudo_label_panels  # matplotlib: only here

        dataset = self.dataset_class(self.unlabeled_folder)
        patch = list(self.configuration_manager.patch_size)
        rows = []
        for key in dataset.identifiers[:self.num_panel_cases]:
            data = np.asarray(dataset.load_case(key)[0][:])
            spatial = data.shape[1:]
            if len(patch) == 2:  # 2d: the middle slice
                data, spatial = data[:, spatial[0] // 2], spatial[1:]
            bbox = [[0, data.shape[0]]] + [[(s - p) // 2, (s - p) // 2 + p] for s, p in zip(spatial, patch)]
            x = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()[None].to(self.device)
            teacher_logits = self.teacher(x)
            targets, _ = self.make_pseudo_labels(x, teacher_logits)
            teacher = torch.softmax(teacher_logits.float(), 1).argmax(1)
            image = x[0, 0].cpu().numpy()
            labels = [t[0, 0].cpu().numpy() for t in (teacher[:, None], targets["text"][1], targets["combined"][1])]
            if image.ndim == 3:  # 3d: the middle slice of the patch
                z = image.shape[0] // 2
                image, labels = image[z], [lab[z] for lab in labels]
            rows.append((key, image, *labels))
        save_pseudo_label_panels(rows, len(self.label_manager.foreground_labels),
                                 os.path.join(self.output_folder, f"pseudo_labels_epoch_{epoch:04d}.png"))

    # --- checkpoints ---------------------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict:
        state = super().extra_checkpoint_state()
        if self.vlm is not None:
            state.update({"vlm_weights": self.vlm.state_dict(), "vlm_metadata": self.vlm_metadata})
        return state

    def check_checkpoint(self, checkpoint: dict, where: str) -> None:
        super().check_checkpoint(checkpoint, where)
        state = checkpoint.get("cps4_state") or {}
        if self.use_text and "vlm_metadata" in state:
            check_vlm_metadata(state["vlm_metadata"], self.expected_vlm_metadata(), f"the VLM stored in {where}")

    def resume_summary(self) -> str:
        return super().resume_summary() + (", VLM" if self._restored_vlm_state is not None or self.vlm is not None
                                           else "")

    def load_extra_checkpoint_state(self, state: Optional[dict]) -> None:
        super().load_extra_checkpoint_state(state)
        if state is not None and "vlm_weights" in state:
            if self.vlm is not None:
                self.vlm.load_state_dict(state["vlm_weights"])
                self.vlm_metadata = state["vlm_metadata"]
            else:  # built from this state in on_train_start (no stage-(i) folder needed to resume)
                self._restored_vlm_state = state


# --- the paper's ablations (schedule variants: registry; experiments: nnunet_cps4.experiments.variants) ----
class nnUNetTrainerCPS4_noText(nnUNetTrainerCPS4):
    """No VLM: pseudo labels from the teacher alone (= the mean teacher, kept here for side-by-side runs)."""
    use_text = False


class nnUNetTrainerCPS4_noTokenLoss(nnUNetTrainerCPS4):
    """VLM pretrained without the token-level attention loss."""
    vlm_trainer_class = nnUNetTrainerCPS4VLM_noTokenLoss


class nnUNetTrainerCPS4_noPixelLoss(nnUNetTrainerCPS4):
    """VLM pretrained without the pixel-level attention loss."""
    vlm_trainer_class = nnUNetTrainerCPS4VLM_noPixelLoss


class nnUNetTrainerCPS4_randomText(nnUNetTrainerCPS4):
    """VLM whose prompt embeddings are replaced by fixed random vectors: does the text matter?"""
    vlm_trainer_class = nnUNetTrainerCPS4VLM_randomText
