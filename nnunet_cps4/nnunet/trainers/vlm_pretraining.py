"""Stage (i): `nnUNetTrainerCPS4VLM` trains the class-prompt VLM on the labeled cases of a fold.

It is an nnU-Net trainer so that stage (i) gets nnU-Net's data loading, augmentation, optimizer and schedule,
logging, progress.png, checkpoints and `--c` for free. What differs from segmentation training:
- the network is the VLM (`nnunet_cps4.method.vlm`), built from the plans, the dataset's class prompts and a frozen
  text encoder; no deep supervision;
- the loss is the token- plus pixel-level attention loss (`nnunet_cps4.method.attention_losses`);
- validation Dice is that of the fused map (per-class Otsu binarisation + fusion, `nnunet_cps4.method.fusion`), per
  class, on the fold's validation cases; the final validation also writes PNG panels (image, ground truth, a
  few per-class maps, fused map).
The final checkpoint (`checkpoint_final.pth` in this trainer's fold folder) carries metadata — dataset, plans,
configuration, fold, class names, prompts, text encoder, VLM settings — checked
(`nnunet_cps4.nnunet.checkpoints`) before stage (ii) uses it. This trainer is not a segmentation model:
`nnUNetv2_predict` refuses it; `nnUNetv2_cps4_predict_vlm` writes its fused maps. `run_stage1` trains one (the
stage-(i) command and a CPS4 trainer whose fold has no VLM yet call it).
"""
import os
from copy import deepcopy
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import save_json
from torch import autocast, nn
from torch import distributed as dist

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss, get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.attention_losses import AttentionLoss
from nnunet_cps4.method.fusion import labels_to_probabilities
from nnunet_cps4.method.metrics import dice, dice_from_counts
from nnunet_cps4.method.prompts import load_dataset_prompts
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule
from nnunet_cps4.method.text_encoders import build_text_encoder, class_text_embeddings
from nnunet_cps4.method.vlm import VLMConfig, random_text_features
from nnunet_cps4.nnunet.checkpoints import (VLM_METADATA_FORMAT, ExtraCheckpointStateMixin, check_vlm_metadata,
                                            vlm_metadata_of)
from nnunet_cps4.nnunet.trainers.common import (FoldGuardMixin, backward_and_step, log_epoch_means,
                                                register_log_keys, unwrap)
from nnunet_cps4.nnunet.trainers.schedules import apply_schedule
from nnunet_cps4.nnunet.trainers.spine_mirroring import SpineMirroringMixin
from nnunet_cps4.nnunet.vlm_from_plans import build_vlm
from nnunet_cps4.nnunet.vlm_prediction import fused_case_prediction, vlm_predictor


class nnUNetTrainerCPS4VLM(SpineMirroringMixin, FoldGuardMixin, ExtraCheckpointStateMixin, nnUNetTrainer):
    # --- stage (i) settings; variants override these class attributes ---------------------------------------
    mirror_superior_inferior_on_spines = False  # as stage (ii): no SI mirroring on spine datasets
    token_loss_weight: float = 1.0
    pixel_loss_weight: float = 1.0
    token_loss_form: str = "log"           # -log(attention mass in mask); "linear": 1 - mass (see the losses)
    # not in the paper, off by default: nnU-Net's Dice+CE on softmax over [0, s_1, ..., s_C] (background logit 0),
    # so that neighbouring classes compete for a pixel as in nnU-Net's own training (variant _segLoss)
    segmentation_loss_weight: float = 0.0
    vlm_config: VLMConfig = VLMConfig()
    text_encoder_spec: Optional[str] = None  # None: $nnUNet_cps4_text_encoder or the offline MiniLM default
    random_text_embeddings: bool = False     # ablation: fixed random vectors instead of prompt embeddings
    pseudo_label_rule: PseudoLabelRule = PseudoLabelRule()  # its binarisation and fusion: the validation's
    #                                                         fused map, and the default of predict_vlm
    num_panel_cases: int = 3                 # PNG panels written by the final validation
    stage1_log_keys = ("token_loss", "pixel_loss", "segmentation_loss", "temperature")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 250
        self.enable_deep_supervision = False
        self.metadata: Optional[dict] = None
        register_log_keys(self, self.stage1_log_keys)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        raise CPS4Error("nnUNetTrainerCPS4VLM trains the stage-(i) vision-language model, not a segmentation "
                        "network. Fix: predict with the CPS4 (or mean-teacher) trainer's model; write the VLM's "
                        "fused maps with nnUNetv2_cps4_predict_vlm")

    # --- set-up: nnU-Net's initialize, with the VLM as network and the attention loss ----------------------
    def initialize(self):
        if self.was_initialized:
            raise RuntimeError("initialize called twice")
        if self.label_manager.has_regions:
            raise CPS4Error("the CPS4 VLM needs plain labels; dataset.json defines regions. Fix: use nnUNetTrainer")
        self._set_batch_size_and_oversample()
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        vlm, self.metadata = self.build_vlm_from_prompts()
        self.network = vlm.to(self.device)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            self.network = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=[self.local_rank])
        self.loss = AttentionLoss(self.token_loss_weight, self.pixel_loss_weight, self.token_loss_form)
        self.segmentation_loss = None
        if self.segmentation_loss_weight:
            self.segmentation_loss = DC_and_CE_loss(
                {"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                 "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1, ignore_label=self.label_manager.ignore_label,
                dice_class=MemoryEfficientSoftDiceLoss)
        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.was_initialized = True
        self.logger.update_config({"stage1": {k: v for k, v in self.metadata.items() if k != "prompts"}})

    def build_vlm_from_prompts(self):
        """The VLM with this dataset's class-prompt embeddings (computed once here), and its metadata."""
        prompts = load_dataset_prompts(self.dataset_json, self.plans_manager.dataset_name)
        if prompts.label_ids != list(self.label_manager.foreground_labels):
            raise CPS4Error(f"the prompts cover label ids {prompts.label_ids} but the plans' label manager has "
                            f"{self.label_manager.foreground_labels}. Fix: dataset.json labels must be 0..N")
        encoder = build_text_encoder(self.text_encoder_spec)
        features = class_text_embeddings(prompts, encoder)
        if self.random_text_embeddings:
            features = random_text_features(*features.shape)
        self.print_to_log_file(f"Stage (i): {prompts.num_classes} class prompts from {prompts.source}, text "
                               f"encoder {encoder.spec} ({encoder.dim}-d)"
                               + (", replaced by random vectors" if self.random_text_embeddings else ""))
        vlm = build_vlm(self.vlm_config, self.configuration_manager, self.num_input_channels, features)
        metadata = {
            "format": VLM_METADATA_FORMAT, "vlm_trainer": self.__class__.__name__,
            "dataset": self.plans_manager.dataset_name, "plans": self.plans_manager.plans_name,
            "configuration": self.configuration_name, "fold": self.fold,
            "class_names": prompts.class_names, "label_ids": prompts.label_ids,
            "prompts": prompts.to_dict(), "prompt_fingerprint": prompts.fingerprint(),
            "text_encoder": encoder.spec, "text_dim": int(features.shape[1]),
            "random_text_embeddings": self.random_text_embeddings, "vlm_config": self.vlm_config.to_dict(),
            "num_input_channels": self.num_input_channels, "pseudo_label_rule": self.pseudo_label_rule.to_dict(),
            "losses": {"token_weight": self.token_loss_weight, "pixel_weight": self.pixel_loss_weight,
                       "token_form": self.token_loss_form, "segmentation_weight": self.segmentation_loss_weight},
        }
        return vlm, metadata

    def configure_optimizers(self):
        """nnU-Net's SGD and poly schedule; with a fine-tuned pretrained encoder its parameters form a group whose
        learning rate stays `encoder_lr_factor` times the others' through the schedule."""
        optimizer, scheduler = super().configure_optimizers()
        if not self.vlm_config.finetune_encoder:
            return optimizer, scheduler
        optimizer = torch.optim.SGD(unwrap(self.network).parameter_groups(self.initial_lr), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, GroupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # the VLM has no deep supervision

    def extra_checkpoint_state(self) -> dict:
        return {"vlm_metadata": self.metadata}

    def check_checkpoint(self, checkpoint: dict, where: str) -> None:
        super().check_checkpoint(checkpoint, where)
        check_vlm_metadata(vlm_metadata_of(checkpoint), self.metadata, where)

    def load_extra_checkpoint_state(self, state: Optional[dict]) -> None:
        pass  # the metadata was checked before the weights were loaded (check_checkpoint)

    def resume_summary(self) -> str:
        return "VLM, optimizer"

    # --- steps ---------------------------------------------------------------------------------------------
    def _forward_loss(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            sim = self.network(data)
            total, parts = self.loss(sim, target)
            parts["segmentation"] = torch.zeros(())
            if self.segmentation_loss is not None:
                logits = torch.cat((torch.zeros_like(sim[:, :1]), sim), 1)
                segmentation = self.segmentation_loss(logits, target)
                total = total + self.segmentation_loss_weight * segmentation
                parts["segmentation"] = segmentation.detach()
        return sim, target, total, parts

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        _, _, total, parts = self._forward_loss(batch)
        backward_and_step(self, total)
        return {"loss": total.detach().cpu().numpy(), "token_loss": parts["token"].item(),
                "pixel_loss": parts["pixel"].item(), "segmentation_loss": parts["segmentation"].item()}

    def validation_step(self, batch: dict) -> dict:
        sim, target, total, _ = self._forward_loss(batch)
        fused = self.pseudo_label_rule.fuse(torch.sigmoid(sim.float()))
        onehot = labels_to_probabilities(fused, sim.shape[1] + 1)
        target = target.clone()
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (target != self.label_manager.ignore_label).float()
            target[target == self.label_manager.ignore_label] = 0
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=[0] + list(range(2, onehot.ndim)), mask=mask)
        return {"loss": total.detach().cpu().numpy(), "tp_hard": tp[1:].cpu().numpy(),
                "fp_hard": fp[1:].cpu().numpy(), "fn_hard": fn[1:].cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        temperature = float(1.0 / unwrap(self.network).logit_scale.exp().clamp(max=100).item())
        log_epoch_means(self, [dict(o, temperature=temperature) for o in train_outputs], self.stage1_log_keys)

    def on_epoch_end(self):
        self.print_to_log_file("stage (i): " + ", ".join(
            f"{k} {self.logger.get_value(k, step=-1):.4f}" for k in self.stage1_log_keys))
        super().on_epoch_end()

    # --- final validation: fused-map Dice per class on the fold's validation cases, PNG panels -------------
    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunet_cps4.plots import save_vlm_panels  # matplotlib: only here

        if self.local_rank != 0:
            if self.is_ddp:
                dist.barrier()
            return
        vlm = unwrap(self.network)
        vlm.eval()
        predictor = vlm_predictor(vlm, self.plans_manager, self.configuration_manager, self.dataset_json,
                                  self.device)
        _, val_keys = self.do_split()
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        out_folder = os.path.join(self.output_folder, "validation_vlm")
        os.makedirs(out_folder, exist_ok=True)
        class_names = self.metadata["class_names"]
        tp, fp, fn = (np.zeros(len(class_names)) for _ in range(3))
        per_case = {}
        for i, key in enumerate(dataset_val.identifiers):
            data, seg, _, _ = dataset_val.load_case(key)
            data = torch.from_numpy(np.asarray(data[:], dtype=np.float32))
            seg = np.asarray(seg[:])[0]
            probs, fused = fused_case_prediction(predictor, data, self.pseudo_label_rule)
            case_dice = {}
            for c, name in enumerate(class_names):
                p, g = fused == c + 1, seg == c + 1
                tp[c] += np.sum(p & g); fp[c] += np.sum(p & ~g); fn[c] += np.sum(~p & g)  # noqa: E702
                case_dice[name] = dice(p, g)
            per_case[key] = case_dice
            if i < self.num_panel_cases:
                save_vlm_panels(data[0].numpy(), seg, probs, fused, class_names,
                                os.path.join(out_folder, f"{key}.png"))
        class_dice = dice_from_counts(tp, fp, fn)
        summary = {"fused_map_dice_per_class": dict(zip(class_names, map(float, class_dice))),
                   "mean_fused_map_dice": float(np.nanmean(class_dice)), "cases": per_case,
                   "pseudo_label_rule": self.pseudo_label_rule.to_dict()}
        save_json(summary, os.path.join(out_folder, "summary.json"), sort_keys=False)
        self.print_to_log_file(f"VLM validation (fused map, {len(per_case)} case(s)): mean Dice "
                               f"{summary['mean_fused_map_dice']:.4f}; per class " + ", ".join(
                                   f"{n} {d:.3f}" for n, d in summary["fused_map_dice_per_class"].items()))
        if self.is_ddp:
            dist.barrier()


class GroupPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule, scaled per parameter group by the group's "lr_factor" (nnU-Net's own scheduler
    writes one learning rate into every group)."""

    def step(self, current_step=None):
        super().step(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] *= group.get("lr_factor", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def run_stage1(trainer_class, plans: dict, configuration: str, fold, dataset_json: dict, device: torch.device,
               continue_training: bool = False, validation_only: bool = False,
               schedule: Optional[dict] = None) -> str:
    """Train (or resume / only validate) a stage-(i) trainer; return the path of its final checkpoint.

    schedule: optional overrides of the trainer's schedule (keys of `schedules.SCHEDULE_ATTRIBUTES`).
    """
    plans = deepcopy(plans)
    plans["continue_training"] = continue_training
    trainer = trainer_class(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                            device=device)
    apply_schedule(trainer, schedule)
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


# --- the paper's ablations (schedule variants: registry; experiments: nnunet_cps4.experiments.variants) ----
class nnUNetTrainerCPS4VLM_noTokenLoss(nnUNetTrainerCPS4VLM):
    token_loss_weight = 0.0


class nnUNetTrainerCPS4VLM_noPixelLoss(nnUNetTrainerCPS4VLM):
    pixel_loss_weight = 0.0


class nnUNetTrainerCPS4VLM_randomText(nnUNetTrainerCPS4VLM):
    """Prompt embeddings replaced by fixed random vectors: does the text matter?"""
    random_text_embeddings = True
