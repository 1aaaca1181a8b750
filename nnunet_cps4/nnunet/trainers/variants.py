"""Schedule variants of every trainer family, generated from `schedules.SCHEDULES`.

For each schedule S of schedules.SCHEDULES (smoke, demo, cpu5k, 5epochs, ..., 250epochs) this module defines
  nnUNetTrainerSupervised_S          plain nnU-Net on the labeled cases (the baseline, same schedule)
  nnUNetTrainerMeanTeacher_S         the mean teacher
  nnUNetTrainerCPS4VLM[_ablation]_S  stage (i)
  nnUNetTrainerCPS4[_ablation]_S     stage (ii); its VLM is the stage-(i) trainer of the same ablation and S
The ablations are written out by hand in their modules; here only the schedule is added, so e.g.
nnUNetTrainerCPS4_noTokenLoss_50epochs is nnUNetTrainerCPS4_noTokenLoss with 50 epochs whose stage (i) is
nnUNetTrainerCPS4VLM_noTokenLoss_50epochs.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cps4.nnunet.trainers import cps4, mean_teacher, vlm_pretraining
from nnunet_cps4.nnunet.trainers.schedules import SCHEDULES, ScheduleMixin, schedule_attributes


class nnUNetTrainerSupervised(nnUNetTrainer):
    """nnU-Net's nnUNetTrainer, unchanged; named so the plugin can give it the schedules of its other trainers."""


FAMILIES = (
    [nnUNetTrainerSupervised, mean_teacher.nnUNetTrainerMeanTeacher, mean_teacher.nnUNetTrainerMeanTeacher_hardDiceCE,
     mean_teacher.nnUNetTrainerMeanTeacher_lowWeight, mean_teacher.nnUNetTrainerMeanTeacher_warmup,
     mean_teacher.nnUNetTrainerMeanTeacher_warmupDice]
    + [vlm_pretraining.nnUNetTrainerCPS4VLM] + vlm_pretraining.nnUNetTrainerCPS4VLM.__subclasses__()
    + [cps4.nnUNetTrainerCPS4] + cps4.nnUNetTrainerCPS4.__subclasses__()
)

__all__ = ["nnUNetTrainerSupervised"]


def _define(base, schedule: str) -> None:
    name = f"{base.__name__}_{schedule}"
    attributes = {"__module__": __name__, "__qualname__": name, **schedule_attributes(schedule),
                  "__doc__": f"{base.__name__} with the '{schedule}' schedule {SCHEDULES[schedule]}."}
    if issubclass(base, cps4.nnUNetTrainerCPS4):
        attributes["vlm_trainer_name"] = f"{base.vlm_trainer_name}_{schedule}"
    globals()[name] = type(name, (ScheduleMixin, base), attributes)
    __all__.append(name)


for _family in FAMILIES:
    for _schedule in SCHEDULES:
        _define(_family, _schedule)
