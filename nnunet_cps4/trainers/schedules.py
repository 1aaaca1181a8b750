"""Training-length settings as class attributes, so a schedule variant is a one-line subclass.

nnU-Net sets its schedule inside `nnUNetTrainer.__init__` (1000 epochs x 250 iterations, 50 validation
iterations), which is days on a CPU. A trainer that mixes this in and sets any of the attributes below gets
them applied right after nnU-Net's constructor. The constructor keeps nnU-Net's exact signature (nnU-Net records
its init arguments and rejects extra ones).
"""
from typing import Optional

import torch


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


class SmokeSchedule(ScheduleMixin):
    """2 epochs x 10 iterations, 2 validation iterations, a checkpoint every epoch: for tests and checks."""
    schedule_epochs = 2
    schedule_iterations_per_epoch = 10
    schedule_val_iterations_per_epoch = 2
    schedule_save_every = 1
