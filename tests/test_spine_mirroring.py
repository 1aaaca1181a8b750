"""No superior-inferior mirroring: which axis is SI, and what is left of nnU-Net's mirror axes."""
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.experiments.variants import nnUNetTrainerSupervised_noSIMirror
from nnunet_cps4.nnunet.trainers.registry import nnUNetTrainerSupervised
from nnunet_cps4.nnunet.trainers.spine_mirroring import superior_inferior_array_axis

PHANTOM_DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows -> inferior, columns -> posterior


def test_si_axis_from_the_direction_cosines():
    assert superior_inferior_array_axis(PHANTOM_DIRECTION) == 1          # the phantom's rows
    assert superior_inferior_array_axis((1, 0, 0, 0, 1, 0, 0, 0, 1)) == 0  # axial stack: the slices
    assert superior_inferior_array_axis((0, 0, 1, 0, 1, 0, -1, 0, 0)) == 2


def _mirror_axes(cls, planned_toy, monkeypatch, configuration, cps4=None):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, planned_toy[k])
    pre = os.path.join(planned_toy["nnUNet_preprocessed"], "Dataset501_Toy")
    dataset_json = load_json(os.path.join(pre, "dataset.json"))
    if cps4 is not None:
        dataset_json["cps4"] = cps4
    plans = dict(load_json(os.path.join(pre, "nnUNetPlans.json")), continue_training=False)
    trainer = cls(plans=plans, configuration=configuration, fold="all", dataset_json=dataset_json,
                  device=torch.device("cpu"))
    trainer.initialize()
    mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3]
    assert tuple(trainer.inference_allowed_mirroring_axes) == tuple(mirror)  # test-time augmentation follows
    return tuple(mirror)


def test_si_axis_is_removed_from_training_and_test_time_mirroring(planned_toy, monkeypatch):
    # the toy images are axial stacks (identity direction): SI is the slice axis
    assert _mirror_axes(nnUNetTrainerSupervised, planned_toy, monkeypatch, "3d_fullres") == (0, 1, 2)
    assert _mirror_axes(nnUNetTrainerSupervised_noSIMirror, planned_toy, monkeypatch, "3d_fullres") == (1, 2)
    # in 2d the slice axis is not a patch axis: nothing to remove
    assert _mirror_axes(nnUNetTrainerSupervised_noSIMirror, planned_toy, monkeypatch, "2d") == (0, 1)
    # a dataset can switch it on for every trainer and name the axis itself (here: the image rows)
    assert _mirror_axes(nnUNetTrainerSupervised, planned_toy, monkeypatch, "2d",
                        {"mirror_superior_inferior": False, "superior_inferior_axis": 1}) == (1,)
    with pytest.raises(CPS4Error, match="superior_inferior_axis"):
        _mirror_axes(nnUNetTrainerSupervised, planned_toy, monkeypatch, "2d",
                     {"mirror_superior_inferior": False, "superior_inferior_axis": 5})


def test_semi_supervised_trainers_drop_si_mirroring_on_spine_datasets_by_default(planned_toy, monkeypatch):
    """On a dataset whose prompt file declares a spine order the mean teacher (and CPS4, and stage (i)) do not
    mirror head to feet unless dataset.json asks; the supervised baseline keeps nnU-Net's mirroring; other datasets
    are left alone."""
    from nnunet_cps4.nnunet.trainers.registry import nnUNetTrainerCPS4VLM, nnUNetTrainerMeanTeacher
    from nnunet_cps4.nnunet.trainers.spine_mirroring import SpineMirroringMixin

    # the toy's image rows play the spine's axis (its prompts declare no order to align pseudo labels to)
    rows = {"superior_inferior_axis": 1, "order_pseudo_labels": False}
    assert _mirror_axes(nnUNetTrainerMeanTeacher, planned_toy, monkeypatch, "2d", rows) == (0, 1)  # no spine order
    monkeypatch.setattr(SpineMirroringMixin, "is_spine_dataset", lambda self: True)
    assert _mirror_axes(nnUNetTrainerMeanTeacher, planned_toy, monkeypatch, "2d", rows) == (1,)
    assert _mirror_axes(nnUNetTrainerCPS4VLM, planned_toy, monkeypatch, "2d", rows) == (1,)
    assert _mirror_axes(nnUNetTrainerSupervised, planned_toy, monkeypatch, "2d", rows) == (0, 1)
    assert _mirror_axes(nnUNetTrainerMeanTeacher, planned_toy, monkeypatch, "2d",
                        {**rows, "mirror_superior_inferior": True}) == (0, 1)


def test_a_spine_dataset_is_one_whose_prompts_declare_a_spine_order(monkeypatch):
    from types import SimpleNamespace

    from nnunet_cps4.data.layout import LUMBAR_LABELS
    from nnunet_cps4.nnunet.trainers.spine_mirroring import SpineMirroringMixin

    monkeypatch.delenv("nnUNet_raw", raising=False)
    lumbar = SpineMirroringMixin()
    lumbar.dataset_json = {"labels": LUMBAR_LABELS, "cps4": {"prompt_file": "mrspineseg_lumbar"}}
    lumbar.plans_manager = SimpleNamespace(dataset_name="Dataset700_Lumbar")
    toy = SpineMirroringMixin()
    toy.dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}}
    toy.plans_manager = SimpleNamespace(dataset_name="Dataset501_Toy")
    assert lumbar.is_spine_dataset() and not toy.is_spine_dataset()
