"""`nnUNetTrainerSupervised`: nnU-Net's nnUNetTrainer, unchanged; the plugin gives it the schedules of its other
trainers, so that the supervised baseline of a comparison runs under the same name pattern and schedule."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerSupervised(nnUNetTrainer):
    """nnUNetTrainer on the labeled cases (the baseline every semi-supervised result is compared with)."""
