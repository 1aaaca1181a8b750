"""`nnUNetTrainerSupervised`: nnU-Net's nnUNetTrainer, unchanged; the plugin gives it the schedules of its other
trainers, so that the supervised baseline of a comparison runs under the same name pattern and schedule."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cps4.nnunet.trainers.spine_mirroring import SpineMirroringMixin


class nnUNetTrainerSupervised(SpineMirroringMixin, nnUNetTrainer):
    """nnUNetTrainer on the labeled cases (the baseline every semi-supervised result is compared with); the spine
    mirroring setting (SpineMirroringMixin) is its only addition, off unless dataset.json or a variant asks."""
