"""The public trainers: what a user's `-tr` offers, and what the nnUNet_extTrainer shim re-exports.

Families: supervised nnU-Net, the mean teacher, stage (i), CPS4, and the paper's ablations (no token loss, no
pixel loss, random text, no text); each also with nnU-Net's schedule lengths (`schedules.SCHEDULES`, e.g.
`nnUNetTrainerCPS4_noTokenLoss_50epochs`, whose stage (i) is `nnUNetTrainerCPS4VLM_noTokenLoss_50epochs`).
Method experiments are not here: they are rows of `nnunet_cps4.experiments.variants`, which the benchmark
materialises for its own runs.

Importing this must stay light (nnU-Net imports it at predict time): the text/VLM stack is imported lazily.
"""
import os

from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.nnunet.trainers.cps4 import (nnUNetTrainerCPS4, nnUNetTrainerCPS4_noPixelLoss,
                                              nnUNetTrainerCPS4_noText, nnUNetTrainerCPS4_noTokenLoss,
                                              nnUNetTrainerCPS4_randomText)
from nnunet_cps4.nnunet.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_cps4.nnunet.trainers.schedules import SCHEDULES, with_schedule
from nnunet_cps4.nnunet.trainers.supervised import nnUNetTrainerSupervised
from nnunet_cps4.nnunet.trainers.vlm_pretraining import (nnUNetTrainerCPS4VLM, nnUNetTrainerCPS4VLM_noPixelLoss,
                                                         nnUNetTrainerCPS4VLM_noTokenLoss,
                                                         nnUNetTrainerCPS4VLM_randomText)

FAMILIES = (nnUNetTrainerSupervised, nnUNetTrainerMeanTeacher,
            nnUNetTrainerCPS4VLM, nnUNetTrainerCPS4VLM_noTokenLoss, nnUNetTrainerCPS4VLM_noPixelLoss,
            nnUNetTrainerCPS4VLM_randomText,
            nnUNetTrainerCPS4, nnUNetTrainerCPS4_noTokenLoss, nnUNetTrainerCPS4_noPixelLoss,
            nnUNetTrainerCPS4_randomText, nnUNetTrainerCPS4_noText)

for _family in FAMILIES:
    for _name, _schedule in SCHEDULES.items():
        with_schedule(_family, _name, _schedule, globals(), __name__)

__all__ = sorted(name for name in dir() if name.startswith("nnUNetTrainer"))


def find_trainer_class(name: str):
    """A trainer class by name: the public ones first, then nnU-Net's lookup (nnunetv2 + nnUNet_extTrainer)."""
    if name in __all__:
        return globals()[name]
    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise CPS4Error(f"trainer {name!r} not found in nnunet_cps4 or nnU-Net (nnUNet_extTrainer="
                        f"{os.environ.get('nnUNet_extTrainer', '')}). Fix: check the name") from None
