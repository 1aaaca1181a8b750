"""Plumbing shared by the plugin's trainers: extra checkpoint state, extra logged keys, the optimizer step."""
import os
from typing import Iterable, List, Optional

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch._dynamo import OptimizedModule

EXTRA_CHECKPOINT_KEY = "cps4_state"


def unwrap(network: nn.Module) -> nn.Module:
    """The bare module behind DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    mod = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


def register_log_keys(trainer, keys: Iterable[str]) -> None:
    """Let nnU-Net's logger accept `keys` (it rejects unknown ones); each must then be logged once per epoch."""
    for key in keys:
        trainer.logger.local_logger.my_fantastic_logging.setdefault(key, [])


def nan_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def log_epoch_means(trainer, outputs: List[dict], keys: Iterable[str]) -> None:
    """Log, for this epoch, the mean of each key over the steps' outputs (and over DDP ranks), NaNs ignored."""
    for key in keys:
        value = nan_mean([o[key] for o in outputs if key in o])
        if trainer.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, value)
            value = nan_mean(gathered)
        trainer.logger.log(key, value, trainer.current_epoch)


def backward_and_step(trainer, loss: torch.Tensor) -> None:
    """nnU-Net's update: (scaled) backward, gradient clipping at 12, optimizer step."""
    if trainer.grad_scaler is not None:
        trainer.grad_scaler.scale(loss).backward()
        trainer.grad_scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
        trainer.grad_scaler.step(trainer.optimizer)
        trainer.grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
        trainer.optimizer.step()


class ExtraCheckpointStateMixin:
    """Keeps nnU-Net's checkpoint contract and adds the trainer's own state under `cps4_state`.

    `network_weights` stays what nnU-Net's `save_checkpoint` writes (the network alone), so the stock predictor
    loads it strictly. Subclasses implement `extra_checkpoint_state()` and `load_extra_checkpoint_state(state)`
    (state is None for a checkpoint that has no such key).
    """

    def extra_checkpoint_state(self) -> dict:
        raise NotImplementedError

    def load_extra_checkpoint_state(self, state: Optional[dict]) -> None:
        raise NotImplementedError

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net builds and writes its checkpoint dict in one go; we add our state to the file it wrote rather
        # than copy its checkpoint code (one extra load/save of a few MB, only when a checkpoint is written).
        super().save_checkpoint(filename)
        if self.local_rank == 0 and not self.disable_checkpointing:
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint[EXTRA_CHECKPOINT_KEY] = self.extra_checkpoint_state()
            torch.save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        self.load_extra_checkpoint_state(checkpoint.get(EXTRA_CHECKPOINT_KEY))


class FoldGuardMixin:
    """A clear error instead of scikit-learn's when a fold is asked of fewer labeled cases than folds.

    Semi-supervised datasets often have 2-4 labeled cases; nnU-Net's default 5-fold split cannot be made then.
    """

    def do_split(self):
        from nnunet_cps4.errors import CPS4Error

        if self.fold != "all":
            splits_file = os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")
            n_labeled = len(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
            if not os.path.isfile(splits_file) and n_labeled < 5:
                raise CPS4Error(
                    f"{self.plans_manager.dataset_name} has {n_labeled} labeled case(s), too few for nnU-Net's "
                    f"5-fold cross-validation (fold {self.fold}). Fix: use fold 'all' (all labeled cases, e.g. "
                    f"nnUNetv2_train ... 2d all -tr {self.__class__.__name__}) or write your own {splits_file}")
        return super().do_split()
