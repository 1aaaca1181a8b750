"""Plumbing shared by the plugin's trainers: unwrapping the network, extra logged keys, the optimizer step, the
fold guard. (The checkpoint format is `nnunet_cps4.nnunet.checkpoints`.)"""
import os
from typing import Iterable, List

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_cps4.errors import CPS4Error


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


class FoldGuardMixin:
    """A clear error instead of scikit-learn's when a fold is asked of fewer labeled cases than folds.

    Semi-supervised datasets often have 2-4 labeled cases; nnU-Net's default 5-fold split cannot be made then.
    `check_fold` runs before any work (CPS4 calls it before stage (i), so the message names the trainer the user
    ran) and again in `do_split`.
    """

    def check_fold(self) -> None:
        if self.fold == "all":
            return
        splits_file = os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")
        n_labeled = len(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        if not os.path.isfile(splits_file) and n_labeled < 5:
            raise CPS4Error(
                f"{self.plans_manager.dataset_name} has {n_labeled} labeled case(s), too few for nnU-Net's "
                f"5-fold cross-validation (fold {self.fold}). Fix: use fold 'all' (all labeled cases, e.g. "
                f"nnUNetv2_train ... 2d all -tr {self.__class__.__name__}) or write your own {splits_file}")

    def do_split(self):
        self.check_fold()
        return super().do_split()
