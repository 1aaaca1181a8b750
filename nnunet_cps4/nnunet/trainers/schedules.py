"""Training length as data: a schedule is a dict of settings, a schedule variant a generated subclass.

nnU-Net sets its schedule inside `nnUNetTrainer.__init__` (1000 epochs x 250 iterations, 50 validation
iterations). A class that mixes `ScheduleMixin` in and sets its `schedule` dict gets those settings applied right
after nnU-Net's constructor (the constructor keeps nnU-Net's exact signature: nnU-Net records its init arguments
and rejects extra ones). `with_schedule(Trainer, name, settings, namespace)` makes `Trainer_<name>`; a stage-(ii)
trainer's stage-(i) trainer (`vlm_trainer_class`) gets the same schedule, so both stages of one run share it.

`SCHEDULES` are nnU-Net's own lengths, offered for every public trainer; the benchmark adds its short CPU
schedules in `nnunet_cps4.experiments.variants`.
"""
from typing import Dict, Optional

import torch

SCHEDULES: Dict[str, dict] = {name: dict(epochs=epochs) for name, epochs in
                              (("5epochs", 5), ("10epochs", 10), ("50epochs", 50), ("100epochs", 100),
                               ("250epochs", 250))}
# setting -> trainer attribute. validate_fold_all = False skips nnU-Net's final validation when the fold is 'all':
# that fold holds nothing out, so nnU-Net predicts every labeled training case and scores it against the labels it
# trained on (the benchmark's CPU schedules set it: they score their own test cases instead)
SCHEDULE_ATTRIBUTES = {"epochs": "num_epochs", "iterations_per_epoch": "num_iterations_per_epoch",
                       "val_iterations_per_epoch": "num_val_iterations_per_epoch", "save_every": "save_every",
                       "validate_fold_all": "validate_fold_all"}
_SWITCHES = {"validate_fold_all"}  # settings that are on/off rather than counts


def apply_schedule(trainer, schedule: Optional[dict]) -> None:
    """Set a built trainer's schedule attributes from a schedule dict (keys of SCHEDULE_ATTRIBUTES)."""
    for key, value in (schedule or {}).items():
        if key not in SCHEDULE_ATTRIBUTES:
            raise KeyError(f"unknown schedule setting {key!r}; known: {sorted(SCHEDULE_ATTRIBUTES)}")
        if value is not None:
            setattr(trainer, SCHEDULE_ATTRIBUTES[key], bool(value) if key in _SWITCHES else int(value))


class ScheduleMixin:
    schedule: Optional[dict] = None
    validate_fold_all = True  # nnU-Net's behaviour unless the schedule says otherwise

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule(self, self.schedule)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if str(self.fold) == "all" and not self.validate_fold_all:
            self.print_to_log_file("Final validation skipped: fold 'all' has no held-out cases and this schedule "
                                   "sets validate_fold_all = False")
            return
        return super().perform_actual_validation(save_probabilities)


def with_schedule(base: type, name: str, schedule: dict, namespace: dict, module: str) -> type:
    """`<base>_<name>`, created once in `namespace` (a module's globals, `module` its name)."""
    class_name = f"{base.__name__}_{name}"
    if class_name in namespace:
        return namespace[class_name]
    attributes = {"__module__": module, "__qualname__": class_name, "schedule": dict(schedule),
                  "__doc__": f"{base.__name__} with the '{name}' schedule {schedule}."}
    vlm_trainer = getattr(base, "vlm_trainer_class", None)
    if vlm_trainer is not None:
        attributes["vlm_trainer_class"] = with_schedule(vlm_trainer, name, schedule, namespace, module)
    namespace[class_name] = type(class_name, (ScheduleMixin, base), attributes)
    return namespace[class_name]
