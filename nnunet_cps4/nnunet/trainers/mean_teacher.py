"""`nnUNetTrainerMeanTeacher`: nnU-Net with an EMA teacher that pseudo-labels unlabeled images.

Each training step draws a labeled batch and an unlabeled batch from nnU-Net's own loader and augmentation. The
student (nnU-Net's network) is trained with nnU-Net's Dice+CE loss with deep supervision on the labeled batch,
plus lambda(t) times the same loss against pseudo labels on the unlabeled batch. The teacher is an exponential
moving average of the student, alpha = min(1 - 1/(step + 1), ema_decay) (the predecessor code's rule). By default
the first half of the schedule trains on the labeled batch alone (the teacher still averaging); then the teacher
labels every whole, un-augmented unlabeled case (hard argmax; pixels it is unsure of, probability below the rule's
0.9, left unsupervised), again every 20 % of the schedule, nnU-Net's loader moves those labels with the image
through the student's augmentation, and lambda ramps up over 20 % of the schedule. (The per-batch form, the teacher
labelling the student's augmented batch each step, is `whole_case_teacher_labels = False`.)

Everything semi-supervised is a class attribute, so a variant is a two-line subclass. Checkpoints keep nnU-Net's
contract: `network_weights` is the student alone (stock `nnUNetv2_predict` loads it strictly); the teacher and
the step counter go under the extra key `cps4_state`, so `--c` resumes with the same teacher and ramp.

This trainer is also the base of CPS4 (`nnunet_cps4.nnunet.trainers.cps4`), which changes `make_pseudo_labels` (and
gives the whole-case labels its stored VLM votes).
Schedule variants (nnUNetTrainerMeanTeacher_5epochs, ...) are generated in `registry`.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import autocast, nn
from torch import distributed as dist

from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import load_dataset_prompts
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule
from nnunet_cps4.method.spine_order import LevelOrder, order_levels
from nnunet_cps4.nnunet.checkpoints import ExtraCheckpointStateMixin
from nnunet_cps4.nnunet.teacher_label_cache import decode_labels, read_manifest, write_teacher_labels
from nnunet_cps4.nnunet.trainers.common import (FoldGuardMixin, backward_and_step, log_epoch_means,
                                                register_log_keys, unwrap)
from nnunet_cps4.nnunet.trainers.spine_mirroring import SpineMirroringMixin
from nnunet_cps4.nnunet.unlabeled import (build_unlabeled_dataloader, ensure_unlabeled_preprocessed,
                                          unlabeled_folder_name)
from nnunet_cps4.nnunet.vlm_prediction import sliding_window_predictor

ORDER_KEY = "order_pseudo_labels"  # its dataset.json "cps4" key


def sigmoid_rampup(progress: float) -> float:
    """exp(-5 (1 - p)^2) for p in [0, 1] (Laine & Aila; the usual mean-teacher ramp), 1 after."""
    p = float(np.clip(progress, 0.0, 1.0))
    return float(np.exp(-5.0 * (1.0 - p) ** 2))


def labels_like_outputs(labels: torch.Tensor, outputs) -> List[torch.Tensor]:
    """Nearest-neighbour copies of a (B, 1, *S) label map at each deep-supervision output's resolution."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    result = []
    for o in outputs:
        if tuple(o.shape[2:]) == tuple(labels.shape[2:]):
            result.append(labels)
        else:
            result.append(F.interpolate(labels.float(), size=o.shape[2:], mode="nearest").to(labels.dtype))
    return result


class nnUNetTrainerMeanTeacher(SpineMirroringMixin, FoldGuardMixin, ExtraCheckpointStateMixin, nnUNetTrainer):
    # --- semi-supervised settings; variants override these class attributes -----------------------------
    ema_decay: float = 0.99              # teacher alpha = min(1 - 1/(step + 1), ema_decay)
    mirror_superior_inferior_on_spines = False  # spine datasets: no SI mirroring (spine_mirroring.py)
    unlabeled_weight: float = 1.0        # lambda_max, the weight of the unlabeled loss after the ramp
    rampup_fraction: float = 0.2         # lambda ramps up (sigmoid-shaped) over this fraction of all epochs
    # fraction of all epochs trained on the labeled batch alone (lambda = 0, no unlabeled batch, the teacher
    # still averaging) before the ramp starts: pseudo labels only from a teacher that has learnt the labeled cases.
    # Default (with Dice+CE below) since 2026-12-02, chosen on the pseudo labels' quality on unlabeled cases in the
    # paper's regime (docs/BENCHMARKS.md, "The paper's regime"); the earlier default (0.0, ramp 0.4, CE alone) is
    # the benchmark variant meanteacher_noWarmup
    unlabeled_start_fraction: float = 0.5
    # unlabeled patches per step = max(1, round(ratio * labeled batch size)); 0.5 keeps the student's work per step
    # at 1.5 batches (cost per iteration: docs/BENCHMARKS.md)
    unlabeled_batch_ratio: float = 0.5
    # pseudo-label loss: nnU-Net's Dice+CE with deep supervision and an ignore value, on the confident pixels;
    # dice weight 0 = its cross-entropy alone (docs/METHOD.md says why both exist)
    pseudo_label_dice_weight: float = 1.0
    # binarise -> fuse -> refine -> confidence cut; the mean teacher uses the confidence cut alone: pixels whose
    # teacher probability is below rule.confidence_threshold are left unsupervised
    pseudo_label_rule: PseudoLabelRule = PseudoLabelRule()
    # align the pseudo labels' vertebrae and discs to their order along the spine (method/spine_order.py, the order
    # declared in the dataset's prompt file); what cannot be placed is left unsupervised. None: dataset.json
    # "cps4": {"order_pseudo_labels": true|false}, else the family's default on spine datasets below (a dataset whose
    # prompt file declares no order is never ordered); True on a dataset without an order is an error.
    order_pseudo_labels: Optional[bool] = None
    # On for the mean teacher since 2026-12-03, chosen on its teacher's labels of unlabeled cases: on phantom seed 9
    # +9.6 mean Dice (the unordered mean teacher lost a level on one split), confirmed on the fresh seed 10 (+0.8, no
    # split worse by more than 2; every test level placed on every split); docs/BENCHMARKS.md "Ordering inside
    # training". The row meanteacher_wholeCase is the earlier default. CPS4 inherits it since 2026-12-04 (cps4.py).
    order_pseudo_labels_on_spines: bool = True
    # where the teacher labels: True = on the whole, un-augmented unlabeled cases (nnU-Net's sliding-window
    # predictor) when the unlabeled loss starts and every teacher_label_refresh_fraction of the schedule after, the
    # labels then moved with the image through the student's augmentation by nnU-Net's loader
    # (`nnunet_cps4.nnunet.teacher_label_cache` says why); False = on the student's augmented batch, each step.
    # Default True since 2026-12-02, chosen on the teacher's labels of unlabeled cases in the paper's regime (87.8 vs
    # 85.0, CPS4 87.5 vs 85.8; docs/BENCHMARKS.md "Whole-case teacher labels"); rows meanteacher_warmupDice /
    # cps4_warmupDiceVeto are the per-batch form
    whole_case_teacher_labels: bool = True
    teacher_label_refresh_fraction: float = 0.2
    # keys logged every epoch (mean over the epoch's steps) and plotted in progress_semi_supervised.png
    ssl_log_keys: Tuple[str, ...] = ("ssl_lambda", "supervised_loss", "unlabeled_loss", "teacher_confidence",
                                     "pseudo_label_ignored")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher: Optional[nn.Module] = None
        self.global_step = 0
        self.dataloader_unlabeled = None
        self.unlabeled_folder = None
        self.teacher_labels_folder: Optional[str] = None
        self._teacher_labels_epoch: Optional[int] = None  # epoch the stored teacher labels were made (this run)
        self._stored_labels: dict = {}  # manifest of the stored teacher labels: weight, the rule's statistics
        register_log_keys(self, self.ssl_log_keys)

    # --- set-up ------------------------------------------------------------------------------------------
    def initialize(self):
        if self.label_manager.has_regions:
            raise CPS4Error(f"dataset.json of {self.plans_manager.dataset_name} defines regions; the "
                            f"semi-supervised trainers support plain label maps only. Fix: use nnUNetTrainer")
        if self.is_cascaded:
            raise CPS4Error(f"configuration {self.configuration_name} is a cascade stage; the semi-supervised "
                            f"trainers support 2d and 3d_fullres. Fix: train 2d or 3d_fullres")
        super().initialize()
        self.teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, enable_deep_supervision=False).to(self.device)
        self.teacher.load_state_dict(self.unwrapped_student().state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.pseudo_loss = self._build_pseudo_label_loss()
        self.level_order, self.spine_patch_axis = self._level_order() if self.orders_pseudo_labels() else (None, None)
        self.logger.update_config({"semi_supervised": self.ssl_settings()})

    @property
    def pseudo_ignore_label(self) -> int:
        """Value marking unsupervised pixels in pseudo labels (one past the network's classes)."""
        return self.label_manager.num_segmentation_heads

    def _build_pseudo_label_loss(self):
        """nnU-Net's own Dice+CE (same settings and deep-supervision weights as the supervised loss) with an
        ignore value for pixels a pseudo-label rule leaves unsupervised."""
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=self.pseudo_label_dice_weight,
                              ignore_label=self.pseudo_ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        if self.enable_deep_supervision:
            loss = DeepSupervisionWrapper(loss, self.loss.weight_factors)
        return loss

    def orders_pseudo_labels(self) -> bool:
        """Whether this run aligns its pseudo labels to the spine order (the setting resolved as described above)."""
        explicit = self._explicit_spine_setting(self.order_pseudo_labels, ORDER_KEY)
        if explicit is not None:
            return explicit
        return self.order_pseudo_labels_on_spines and self.is_spine_dataset()

    def _level_order(self):
        """(LevelOrder of the dataset's prompt file, the SI patch axis or None) for ordering pseudo labels."""
        prompts = load_dataset_prompts(self.dataset_json, self.plans_manager.dataset_name)
        order = LevelOrder.from_prompts(prompts)
        if order is None:
            raise CPS4Error(f"{self.__class__.__name__} orders pseudo labels along the spine, but the prompts of "
                            f"{self.plans_manager.dataset_name} ({prompts.source}) declare no spine order. Fix: add "
                            f"\"spine_order\" to the prompt file (see the shipped mrspineseg.json) or use a trainer "
                            f"without ordering")
        return order, self.superior_inferior_patch_axis()

    @torch.no_grad()
    def ordered_levels(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """labels (B, 1, *S) with each image's levels relabelled in spine order (unchanged without ordering);
        probs (B, K, *S): class probabilities, channel = label value (anchor when the sacrum is not in view)."""
        if self.level_order is None:
            return labels
        out = labels.cpu().numpy().copy()
        p = probs.float().cpu().numpy()
        for b in range(out.shape[0]):
            out[b, 0] = order_levels(out[b, 0], self.level_order, probabilities=p[b],
                                     spine_axis=self.spine_patch_axis, ignore_value=self.pseudo_ignore_label)[0]
        return torch.from_numpy(out).to(labels.device)

    def ssl_settings(self) -> dict:
        settings = {k: getattr(self, k) for k in ("ema_decay", "unlabeled_weight", "rampup_fraction",
                                                   "unlabeled_start_fraction", "unlabeled_batch_ratio",
                                                   "pseudo_label_dice_weight", "whole_case_teacher_labels",
                                                   "teacher_label_refresh_fraction")}
        return {**settings, "order_pseudo_labels": self.orders_pseudo_labels(),  # as resolved for this dataset
                "pseudo_label_rule": self.pseudo_label_rule.to_dict()}

    def unwrapped_student(self) -> nn.Module:
        """The student without DDP / torch.compile wrappers (the module whose weights nnU-Net saves)."""
        return unwrap(self.network)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.prepare_semi_supervised()
        super().on_train_start()

    def prepare_semi_supervised(self) -> None:
        """Everything that can fail on the user's data, before any training: the fold, then the unlabeled images
        (checked and preprocessed once, on rank 0, before any rank builds its loaders)."""
        self.check_fold()
        if self.local_rank == 0:
            ensure_unlabeled_preprocessed(self.plans_manager, self.configuration_manager, self.configuration_name,
                                          self.dataset_json, num_processes=int(os.environ.get("nnUNet_def_n_proc",
                                                                                              2)))
        if self.is_ddp:
            dist.barrier()

    def get_dataloaders(self):
        dl_tr, dl_val = super().get_dataloaders()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        next(self.dataloader_unlabeled)
        return dl_tr, dl_val

    def get_unlabeled_dataloader(self):
        self.unlabeled_folder = os.path.join(self.preprocessed_dataset_folder_base,
                                             unlabeled_folder_name(self.configuration_manager.data_identifier))
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # the same augmentation as the labeled batch; no deep-supervision targets (pseudo labels are made later)
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None,
            ignore_label=self.label_manager.ignore_label)
        batch_size = max(1, int(round(self.unlabeled_batch_ratio * self.batch_size)))
        return build_unlabeled_dataloader(self.unlabeled_folder, self.dataset_class, batch_size,
                                          initial_patch_size, self.configuration_manager.patch_size,
                                          self.label_manager, transforms, get_allowed_n_proc_DA(),
                                          pin_memory=self.device.type == "cuda",
                                          maps_folder=self.unlabeled_maps_folder())

    def unlabeled_maps_folder(self) -> Optional[str]:
        """Per-case maps that travel with the unlabeled batch as its target's last channel: the stored teacher
        labels of whole cases (once made), CPS4 without them: its stored VLM votes."""
        return self.teacher_labels_folder

    # --- the teacher's labels of whole cases (whole_case_teacher_labels) -------------------------------------
    def is_teacher_label_epoch(self, epoch: int) -> bool:
        """Whether the teacher labels the whole unlabeled cases before `epoch`: from the epoch in which the
        unlabeled loss starts, every teacher_label_refresh_fraction of the schedule (0: once), and on the first
        epoch of a resumed run that needs them."""
        first = int(np.floor(self.unlabeled_start_fraction * self.num_epochs))
        if not self.whole_case_teacher_labels or epoch < first:
            return False
        if self._teacher_labels_epoch is None:
            return True
        period = int(round(self.teacher_label_refresh_fraction * self.num_epochs))
        return period > 0 and (epoch - first) % period == 0

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.is_teacher_label_epoch(self.current_epoch):
            self.make_teacher_labels()

    @property
    def slices_as_batch(self) -> bool:
        """A 2d configuration: a whole case's slices form the batch the pseudo-label rule sees."""
        return len(self.configuration_manager.patch_size) == 2

    def make_teacher_labels(self) -> None:
        """The teacher labels every unlabeled case whole into the fold folder's teacher_labels/, then the
        unlabeled loader is rebuilt to carry them."""
        self.close_unlabeled_loader()
        folder = os.path.join(self.output_folder, "teacher_labels")
        if self.local_rank == 0:
            predictor = sliding_window_predictor(self.teacher, self.plans_manager, self.configuration_manager,
                                                 self.dataset_json, self.device, self.__class__.__name__)
            cases = self.dataset_class(self.unlabeled_folder,
                                       folder_with_segs_from_previous_stage=self.whole_case_maps_folder())
            write_teacher_labels(cases, predictor, self.whole_case_pseudo_labels, folder, self.pseudo_ignore_label,
                                 self.slices_as_batch, self.current_epoch, log=self.print_to_log_file)
        if self.is_ddp:
            dist.barrier()
        self.teacher_labels_folder = folder
        self._stored_labels = read_manifest(folder)
        self._teacher_labels_epoch = self.current_epoch
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        next(self.dataloader_unlabeled)

    @torch.no_grad()
    def whole_case_pseudo_labels(self, data: torch.Tensor, logits: torch.Tensor, maps: Optional[torch.Tensor]
                                 ) -> Tuple[torch.Tensor, float, Dict[str, float]]:
        """(pseudo labels (B, 1, *S), their loss weight, the rule's statistics) of one whole case in the batch
        layout: the same rule as on a batch (`make_pseudo_labels`), the case's `whole_case_maps_folder` map as the
        batch's target."""
        targets, stats = self.make_pseudo_labels(data.to(self.device), logits.to(self.device),
                                                 None if maps is None else maps.to(self.device))
        used = [(w, labels) for w, labels in targets.values() if w != 0]
        if len(used) != 1:
            raise CPS4Error(f"{self.__class__.__name__} stores one pseudo label per case "
                            f"(whole_case_teacher_labels) but its rule makes {len(used)} weighted targets. Fix: "
                            f"give every target but one weight 0 (CPS4: text_loss_weight = 0)")
        return used[0][1], float(used[0][0]), stats

    def whole_case_maps_folder(self) -> Optional[str]:
        """Per-case maps the pseudo-label rule reads for a whole case (CPS4: the stored VLM votes); none here."""
        return None

    def close_unlabeled_loader(self) -> None:
        if self.dataloader_unlabeled is not None and hasattr(self.dataloader_unlabeled, "_finish"):
            self.dataloader_unlabeled._finish()

    def on_train_end(self):
        super().on_train_end()
        self.close_unlabeled_loader()

    def start_unlabeled_phase(self) -> None:
        """Jump to the first epoch whose steps use the unlabeled batch (as if resumed there): for measuring what a
        semi-supervised step costs (`nnunet_cps4.experiments.cost`), not for training."""
        self.current_epoch = int(np.ceil(self.unlabeled_start_fraction * self.num_epochs))
        self.global_step = self.current_epoch * self.num_iterations_per_epoch
        self.on_train_epoch_start()

    # --- one step ------------------------------------------------------------------------------------------
    def current_unlabeled_weight(self) -> float:
        """lambda(t): 0 for the first unlabeled_start_fraction of the schedule, then unlabeled_weight times the
        sigmoid ramp over the next rampup_fraction of the schedule."""
        epoch_progress = self.global_step / max(1, self.num_iterations_per_epoch)
        since_start = epoch_progress - self.unlabeled_start_fraction * self.num_epochs
        if since_start < 0:
            return 0.0
        rampup_epochs = self.rampup_fraction * self.num_epochs
        if rampup_epochs <= 0:
            return float(self.unlabeled_weight)
        return float(self.unlabeled_weight) * sigmoid_rampup(since_start / rampup_epochs)

    @torch.no_grad()
    def make_pseudo_labels(self, unlabeled_data: torch.Tensor, teacher_logits: torch.Tensor,
                           unlabeled_target: Optional[torch.Tensor] = None
                           ) -> Tuple[Dict[str, Tuple[float, torch.Tensor]], Dict[str, float]]:
        """Targets for the student on the unlabeled batch: {name: (weight, labels (B, 1, *S))}, and statistics.
        unlabeled_target: the loader's target of that batch (its last channel: `unlabeled_maps_folder`'s maps).

        The mean teacher uses the teacher's confident argmax with weight 1; CPS4 overrides this.
        """
        probs = torch.softmax(teacher_logits.float(), 1)
        confidence, labels = probs.max(1, keepdim=True)
        labels = self.pseudo_label_rule.confident(self.ordered_levels(labels, probs), confidence,
                                                  self.pseudo_ignore_label)
        return {"teacher": (1.0, labels)}, {"teacher_confidence": confidence.mean().item(),
                                            "pseudo_label_ignored": (labels == self.pseudo_ignore_label)
                                            .float().mean().item()}

    @torch.no_grad()
    def batch_pseudo_labels(self, data_u: torch.Tensor, target_u: torch.Tensor
                            ) -> Tuple[Dict[str, Tuple[float, torch.Tensor]], Dict[str, float]]:
        """The student's targets on an unlabeled batch: the stored whole-case teacher labels the loader moved
        with the image, or the teacher's labels of this augmented batch."""
        if not self.whole_case_teacher_labels:
            return self.make_pseudo_labels(data_u, self.teacher(data_u), target_u)
        if self.teacher_labels_folder is None:
            raise CPS4Error(f"{self.__class__.__name__}: an unlabeled step before the teacher labelled the whole "
                            f"cases (epoch {self.current_epoch}). Fix: report this; whole_case_teacher_labels "
                            f"makes them at the start of the epoch in which the unlabeled loss starts")
        labels = decode_labels(target_u[:, -1:].to(self.device), self.pseudo_ignore_label)
        # the rule's statistics of the stored labels (whole cases, at their last labelling); ignored pixels of
        # this augmented batch (padding included)
        nan = float("nan")
        stats = {k: nan for k in self.ssl_log_keys if k not in ("ssl_lambda", "supervised_loss", "unlabeled_loss")}
        stats.update({k: v for k, v in self._stored_labels["stats"].items() if k in stats})
        stats["pseudo_label_ignored"] = (labels == self.pseudo_ignore_label).float().mean().item()
        return {"teacher": (self._stored_labels["weight"], labels)}, stats

    @torch.no_grad()
    def labeled_batch_stats(self, data: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
        """Extra per-step statistics on the labeled batch (full-resolution target); CPS4 adds the VLM's Dice.

        A key must be returned at every step (NaN when not measured): epochs average with nanmean.
        """
        return {}

    @torch.no_grad()
    def update_teacher(self) -> None:
        alpha = min(1.0 - 1.0 / (self.global_step + 1), self.ema_decay)
        student = self.unwrapped_student()
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(t_params, alpha)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
        for t_buf, s_buf in zip(self.teacher.buffers(), student.buffers()):
            t_buf.copy_(s_buf)

    def train_step(self, batch: dict) -> dict:
        # Replaced as a whole: nnU-Net's train_step computes one loss and steps the optimizer itself.
        lam = self.current_unlabeled_weight()
        if lam == 0:
            return self.labeled_only_step(batch)
        unlabeled = next(self.dataloader_unlabeled)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        data_u = unlabeled["data"].to(self.device, non_blocking=True)
        n_labeled = data.shape[0]

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            pseudo_targets, stats = self.batch_pseudo_labels(data_u, unlabeled["target"])
            # one student pass over both batches (nnU-Net's instance norm keeps samples independent)
            output = self.network(torch.cat((data, data_u)))
            outputs = output if isinstance(output, (list, tuple)) else [output]
            out_l = [o[:n_labeled] for o in outputs]
            out_u = [o[n_labeled:] for o in outputs]
            if not self.enable_deep_supervision:
                out_l, out_u = out_l[0], out_u[0]
            supervised = self.loss(out_l, target)
            unlabeled_loss = torch.zeros((), device=self.device)
            for weight, labels in pseudo_targets.values():
                if weight != 0:
                    unlabeled_loss = unlabeled_loss + weight * self.pseudo_loss(out_u,
                                                                                self._ds_targets(labels, out_u))
            total = supervised + lam * unlabeled_loss
        stats.update(self.labeled_batch_stats(data, target[0] if isinstance(target, list) else target))
        self.stop_if_not_finite({"supervised (labeled batch)": supervised, "unlabeled (pseudo labels)":
                                 unlabeled_loss}, batch, unlabeled)
        backward_and_step(self, total)
        self.update_teacher()
        self.global_step += 1
        return {"loss": total.detach().cpu().numpy(), "ssl_lambda": lam,
                "supervised_loss": supervised.detach().cpu().numpy(),
                "unlabeled_loss": unlabeled_loss.detach().cpu().numpy(), **stats}

    def labeled_only_step(self, batch: dict) -> dict:
        """A step while lambda = 0 (unlabeled_start_fraction): nnU-Net's own train_step, then the teacher update;
        the unlabeled batch is neither loaded nor predicted (unmeasured statistics are NaN)."""
        # moved to the device once, here; nnU-Net's train_step then finds the tensors already there
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        result = super().train_step({**batch, "data": data, "target": target})
        self.stop_if_not_finite({"supervised (labeled batch)": result["loss"]}, batch)
        stats = {k: float("nan") for k in self.ssl_log_keys}
        stats.update(self.labeled_batch_stats(data, target[0] if isinstance(target, list) else target))
        self.update_teacher()
        self.global_step += 1
        return {**stats, **result, "ssl_lambda": 0.0, "supervised_loss": result["loss"], "unlabeled_loss": 0.0}

    def stop_if_not_finite(self, terms: dict, batch: dict, unlabeled: Optional[dict] = None) -> None:
        """A CPS4Error naming the step, the loss term(s) and the cases of the batch when a loss is NaN or infinite,
        so that training stops instead of writing NaN weights into its checkpoints."""
        bad = [name for name, value in terms.items() if not np.isfinite(float(value))]
        if not bad:
            return
        cases = list(batch.get("keys", []))
        if unlabeled is not None:
            cases += [f"{k} (unlabeled)" for k in unlabeled.get("keys", [])]
        raise CPS4Error(f"non-finite loss at epoch {self.current_epoch}, step {self.global_step}: "
                        f"{', '.join(bad)} (batch cases: {', '.join(map(str, cases)) or 'unknown'}). Fix: check "
                        f"those images for NaN/Inf values (nnUNetv2_plan_and_preprocess --verify_dataset_integrity; "
                        f"unlabeled images are checked by nnUNetv2_cps4_preprocess_unlabeled); the last checkpoint "
                        f"written before this step is unaffected")

    def _ds_targets(self, labels: torch.Tensor, outputs):
        return labels_like_outputs(labels, outputs) if self.enable_deep_supervision else labels

    # --- logging -------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        log_epoch_means(self, train_outputs, self.ssl_log_keys)

    def on_epoch_end(self):
        epoch = self.current_epoch
        self.print_to_log_file("semi-supervised: " + ", ".join(
            f"{k} {self.logger.get_value(k, step=-1):.4f}" for k in self.ssl_log_keys))
        super().on_epoch_end()
        if self.local_rank == 0:
            from nnunet_cps4.plots import plot_semi_supervised_progress
            plot_semi_supervised_progress(self.logger.local_logger.my_fantastic_logging, self.ssl_log_keys,
                                          os.path.join(self.output_folder, "progress_semi_supervised.png"),
                                          epoch)

    # --- checkpoints ---------------------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict:
        return {"teacher_weights": self.teacher.state_dict(), "global_step": self.global_step,
                "settings": self.ssl_settings()}

    def resume_summary(self) -> str:
        return f"student, optimizer, teacher, step {self.global_step}"

    def load_extra_checkpoint_state(self, state: Optional[dict]) -> None:
        if state is None:
            self.print_to_log_file("Checkpoint has no teacher (not written by a semi-supervised trainer); the "
                                   "teacher starts from the student")
            self.teacher.load_state_dict(self.unwrapped_student().state_dict())
            self.global_step = self.current_epoch * self.num_iterations_per_epoch
        else:
            self.teacher.load_state_dict(state["teacher_weights"])
            self.global_step = int(state["global_step"])
