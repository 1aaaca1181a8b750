"""Every trainer class of the plugin, by name: what the nnUNet_extTrainer shim re-exports.

Importing this must stay light (nnU-Net imports it at predict time): trainer modules import their text/VLM
stack lazily.
"""
from nnunet_cps4.nnunet.trainers.cps4 import (  # noqa: F401
    nnUNetTrainerCPS4, nnUNetTrainerCPS4_hardDiceCE, nnUNetTrainerCPS4_noPixelLoss, nnUNetTrainerCPS4_noText,
    nnUNetTrainerCPS4_noTokenLoss, nnUNetTrainerCPS4_randomText, nnUNetTrainerCPS4_textOnly,
    nnUNetTrainerCPS4_lowWeight, nnUNetTrainerCPS4_vlmSegLoss, nnUNetTrainerCPS4_warmup,
    nnUNetTrainerCPS4_warmupRefinedOnly, nnUNetTrainerCPS4_warmupRefinedOnlyDice,
    nnUNetTrainerCPS4_warmupDiceVeto)
from nnunet_cps4.nnunet.trainers.mean_teacher import (  # noqa: F401
    nnUNetTrainerMeanTeacher, nnUNetTrainerMeanTeacher_hardDiceCE, nnUNetTrainerMeanTeacher_lowWeight,
    nnUNetTrainerMeanTeacher_warmup, nnUNetTrainerMeanTeacher_warmupDice)
from nnunet_cps4.nnunet.trainers.variants import *  # noqa: F401,F403
from nnunet_cps4.nnunet.trainers.vlm_pretraining import (  # noqa: F401
    nnUNetTrainerCPS4VLM, nnUNetTrainerCPS4VLM_noPixelLoss, nnUNetTrainerCPS4VLM_noTokenLoss,
    nnUNetTrainerCPS4VLM_randomText, nnUNetTrainerCPS4VLM_segLoss, nnUNetTrainerCPS4VLM_vit)

__all__ = sorted(name for name in dir() if name.startswith("nnUNetTrainer"))
