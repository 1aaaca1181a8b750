"""Every trainer class of the plugin, by name: what the nnUNet_extTrainer shim re-exports.

Importing this must stay light (nnU-Net imports it at predict time): trainer modules import their text/VLM
stack lazily.
"""
from nnunet_cps4.trainers.mean_teacher import (  # noqa: F401
    nnUNetTrainerMeanTeacher,
    nnUNetTrainerMeanTeacher_5epochs,
    nnUNetTrainerMeanTeacher_10epochs,
    nnUNetTrainerMeanTeacher_50epochs,
    nnUNetTrainerMeanTeacher_100epochs,
    nnUNetTrainerMeanTeacher_smoke,
)

__all__ = [name for name in dir() if name.startswith("nnUNetTrainer")]
