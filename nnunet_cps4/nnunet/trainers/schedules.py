"""Training-length settings as class attributes, so a schedule variant is a one-line subclass.

nnU-Net sets its schedule inside `nnUNetTrainer.__init__` (1000 epochs x 250 iterations, 50 validation
iterations), which is days on a CPU. A trainer that mixes `ScheduleMixin` in and sets any of its attributes
gets them applied right after nnU-Net's constructor. The constructor keeps nnU-Net's exact signature (nnU-Net
records its init arguments and rejects extra ones).

`SCHEDULES` names the schedules for which `nnunet_cps4.nnunet.trainers.variants` generates a variant of every trainer
family (e.g. nnUNetTrainerCPS4_smoke, nnUNetTrainerMeanTeacher_50epochs), so that methods compared side by side
share one schedule by construction.
"""
from typing import Dict, Optional

import torch

SCHEDULES: Dict[str, dict] = {
    # tests and quick checks: 2 epochs x 10 iterations, 2 validation iterations, a checkpoint every epoch
    "smoke": dict(epochs=2, iterations_per_epoch=10, val_iterations_per_epoch=2, save_every=1),
    # the README's main job on 2 CPU cores (nnUNetv2_cps4_benchmark --preset demo): 1250 iterations (1500 took
    # 15.2 min end to end, over the 15-minute budget)
    "demo": dict(epochs=25, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=10),
    # docs/BENCHMARKS.md on 2 CPU cores: 5000 iterations (2000 left every method under-trained on the phantom)
    "cpu5k": dict(epochs=100, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=25),
    # nnU-Net's own lengths (250 iterations per epoch)
    "5epochs": dict(epochs=5),
    "10epochs": dict(epochs=10),
    "50epochs": dict(epochs=50),
    "100epochs": dict(epochs=100),
    "250epochs": dict(epochs=250),
}


class ScheduleMixin:
    schedule_epochs: Optional[int] = None
    schedule_iterations_per_epoch: Optional[int] = None
    schedule_val_iterations_per_epoch: Optional[int] = None
    schedule_save_every: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attribute, value in (("num_epochs", self.schedule_epochs),
                                 ("num_iterations_per_epoch", self.schedule_iterations_per_epoch),
                                 ("num_val_iterations_per_epoch", self.schedule_val_iterations_per_epoch),
                                 ("save_every", self.schedule_save_every)):
            if value is not None:
                setattr(self, attribute, int(value))


def schedule_attributes(name: str) -> dict:
    """Class attributes of ScheduleMixin for a named schedule."""
    return {f"schedule_{k}": v for k, v in SCHEDULES[name].items()}
