"""The pseudo-label rules of the mean teacher and CPS4 on hand-made teacher logits and VLM maps."""
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule

from nnunet_cps4.experiments.variants import (nnUNetTrainerCPS4_paper, nnUNetTrainerMeanTeacher_hardDiceCE,
                                              nnUNetTrainerMeanTeacher_noWarmup,
                                              nnUNetTrainerMeanTeacher_warmup)
from nnunet_cps4.nnunet.trainers.cps4 import nnUNetTrainerCPS4
from nnunet_cps4.nnunet.trainers.mean_teacher import labels_like_outputs, nnUNetTrainerMeanTeacher


def _trainer(cls, planned_toy, monkeypatch, tmp_path):
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(k, planned_toy[k])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    pre = os.path.join(planned_toy["nnUNet_preprocessed"], "Dataset501_Toy")
    plans = load_json(os.path.join(pre, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = cls(plans=plans, configuration="2d", fold=0, dataset_json=load_json(os.path.join(pre, "dataset.json")),
                  device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _logits(labels, confidence, n_classes=3):
    """(1, n_classes, H, W) logits whose softmax gives `confidence` to `labels` (H, W) and splits the rest."""
    rest = (1 - confidence) / (n_classes - 1)
    probs = torch.full((n_classes, *labels.shape), 0.0) + rest
    probs.scatter_(0, labels[None], confidence[None])
    return probs.log()[None]


class _StubVLM(torch.nn.Module):
    """Stands in for the trained VLM: fixed per-class logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def probabilities(self, x):
        return torch.sigmoid(self.logits)


def test_mean_teacher_leaves_unconfident_pixels_unsupervised(planned_toy, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerMeanTeacher, planned_toy, monkeypatch, tmp_path)
    labels = torch.tensor([[1, 2], [0, 1]])
    confidence = torch.tensor([[0.99, 0.5], [0.95, 0.6]])
    targets, stats = trainer.make_pseudo_labels(None, _logits(labels, confidence))
    ignore = trainer.pseudo_ignore_label
    assert ignore == 3
    assert targets["teacher"][1][0, 0].tolist() == [[1, ignore], [0, ignore]]
    assert stats["pseudo_label_ignored"] == pytest.approx(0.5)
    # the loss ignores those pixels: all-ignored targets give no gradient and no NaN (the default Dice+CE's value
    # is then a constant, nnU-Net's soft Dice of an empty mask; CE alone gives 0)
    for form in (trainer, _trainer(nnUNetTrainerMeanTeacher_noWarmup, planned_toy, monkeypatch, tmp_path)):
        out = [torch.randn(1, 3, 2, 2, requires_grad=True)]
        loss = form.pseudo_loss(out * len(form.loss.weight_factors),
                                [torch.full((1, 1, 2, 2), ignore)] * len(form.loss.weight_factors))
        if form.pseudo_label_dice_weight:
            loss.backward()
            assert torch.isfinite(loss) and not out[0].grad.abs().any()
        else:
            assert float(loss) == 0.0

    hard = _trainer(nnUNetTrainerMeanTeacher_hardDiceCE, planned_toy, monkeypatch, tmp_path)
    targets, _ = hard.make_pseudo_labels(None, _logits(labels, confidence))
    assert targets["teacher"][1][0, 0].tolist() == [[1, 2], [0, 1]]


def test_level_veto_removes_only_the_pixels_where_teacher_and_vlm_name_different_levels():
    # 1 x 6 pixels: [agree on 1 | teacher 1, VLM 2 | teacher background, VLM 2 | teacher 2, VLM silent |
    #                teacher 1 unsure, VLM 1 | teacher 2, VLM 1 weakly]
    teacher = torch.softmax(_logits(torch.tensor([[1, 1, 0, 2, 1, 2]]),
                                    torch.tensor([[0.98, 0.97, 0.99, 0.95, 0.6, 0.96]])), 1)
    y_text = torch.tensor([[[1, 2, 2, 0, 1, 1]]])
    vote = torch.zeros(1, 3, 1, 6)  # the vote is not used by the veto: only which level fired
    ignore = 9
    rule = PseudoLabelRule(combination="level_veto")
    confidence, labels = rule.refine_with_vote(teacher, vote, y_text)
    assert labels[0, 0, 0].tolist() == [1, 1, 0, 2, 1, 2]  # the VLM never relabels
    # vetoed: the two level confusions; the confident background and silent pixels stand; the unsure one is cut
    assert rule.confident(labels, confidence, ignore)[0, 0, 0].tolist() == [1, ignore, 0, 2, ignore, ignore]
    # a vetoed pixel stays out with the confidence cut switched off; the rest is the teacher's label
    off = rule.with_settings(confidence_threshold=0.0)
    assert off.confident(labels, confidence, ignore)[0, 0, 0].tolist() == [1, ignore, 0, 2, 1, ignore]
    with pytest.raises(ValueError, match="combination must be one of"):
        PseudoLabelRule(combination="vetoo")


def test_confirm_adds_only_the_unsure_pixels_the_vlm_names_alike():
    # 1 x 6 pixels: [confident 1, VLM 2 | unsure 1, VLM 1 | unsure 2, VLM 1 | unsure background, VLM silent |
    #                unsure background, VLM 2 | confident background, VLM 1]
    teacher = torch.softmax(_logits(torch.tensor([[1, 1, 2, 0, 0, 0]]),
                                    torch.tensor([[0.97, 0.6, 0.7, 0.8, 0.8, 0.99]])), 1)
    y_text = torch.tensor([[[2, 1, 1, 0, 2, 1]]])
    rule = PseudoLabelRule(combination="confirm")
    confidence, labels = rule.refine_with_vote(teacher, torch.zeros(1, 3, 1, 6), y_text)
    assert labels[0, 0, 0].tolist() == [1, 1, 2, 0, 0, 0]  # the VLM never relabels
    # confident pixels stand whatever the VLM says; unsure ones stay in only where the VLM names the same class
    assert rule.confident(labels, confidence, 9)[0, 0, 0].tolist() == [1, 1, 9, 0, 9, 0]


def test_cps4_supervises_where_teacher_and_vlm_agree(planned_toy, monkeypatch, tmp_path):
    # the paper's form: L(student, y_text) + L(student, refined)
    trainer = _trainer(nnUNetTrainerCPS4_paper, planned_toy, monkeypatch, tmp_path)
    ignore = trainer.pseudo_ignore_label
    # 1 x 4 pixels: [agree on class 1, teacher says 2 but the VLM is silent, both silent, VLM says 2 teacher 1]
    teacher = _logits(torch.tensor([[1, 2, 0, 1]]), torch.tensor([[0.98, 0.95, 0.97, 0.9]]))
    vlm = torch.full((1, 2, 1, 4), -10.0)
    vlm[0, 0, 0, 0] = 8.0      # class "a" (label 1) fires on pixel 0
    vlm[0, 1, 0, 3] = 8.0      # class "b" (label 2) fires on pixel 3
    vlm[0, 0, 0, 1:3] = -2.0   # a little structure so Otsu has two classes
    trainer.vlm = _StubVLM(vlm)
    targets, stats = trainer.make_pseudo_labels(torch.zeros(1, 1, 1, 4), teacher)
    text = targets["text"][1][0, 0, 0].tolist()
    combined = targets["combined"][1][0, 0, 0].tolist()
    assert text == [1, ignore, ignore, 2]          # silent VLM pixels are not background, they are unsupervised
    assert combined == [1, ignore, 0, ignore]      # agreement kept, disagreement left out
    assert stats["teacher_text_agreement"] == pytest.approx(0.5)  # pixels 0 and 2 (both say background)

    # the default (the veto): where the VLM is silent the confident teacher decides; where it fires and disagrees
    # the pixel is left out; no separate y_text loss
    veto = _trainer(nnUNetTrainerCPS4, planned_toy, monkeypatch, tmp_path)
    veto.vlm = _StubVLM(vlm)
    targets, _ = veto.make_pseudo_labels(torch.zeros(1, 1, 1, 4), teacher)
    assert targets["combined"][1][0, 0, 0].tolist() == [1, 2, 0, ignore]
    assert targets["text"][0] == 0.0


def test_warmup_trains_on_labeled_cases_alone_then_ramps(planned_toy, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerMeanTeacher_warmup, planned_toy, monkeypatch, tmp_path)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 10, 4  # warm-up = epochs 0-4, ramp over epochs 5-6
    weights = {}
    for step in (0, 19, 20, 24, 28, 39):
        trainer.global_step = step
        weights[step] = trainer.current_unlabeled_weight()
    assert weights[0] == weights[19] == 0.0
    assert weights[20] == pytest.approx(float(torch.exp(torch.tensor(-5.0)))) and weights[20] < weights[24] < 1
    assert weights[28] == weights[39] == 1.0

    # a warm-up step is nnU-Net's labeled step plus the teacher update: the unlabeled loader is not touched
    class _NoUnlabeledBatches:
        def __next__(self):
            raise AssertionError("the unlabeled batch was loaded during the warm-up")
    trainer.dataloader_unlabeled = _NoUnlabeledBatches()
    trainer.global_step = 0
    data = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        outputs = trainer.network(data)
    labels = (data > 0).long()
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    result = trainer.train_step({"data": data, "target": labels_like_outputs(labels, outputs)})
    assert result["ssl_lambda"] == 0.0 and result["unlabeled_loss"] == 0.0 and result["loss"] > 0
    assert set(trainer.ssl_log_keys) <= set(result)
    assert trainer.global_step == 1
    student = trainer.unwrapped_student().state_dict()
    assert all(torch.equal(trainer.teacher.state_dict()[k], student[k]) for k in student)  # alpha 0 at step 0
    assert any(not torch.equal(teacher_before[k], student[k]) for k in student)
    # what the cost measurement times: the first epoch whose steps use the unlabeled batch
    trainer.start_unlabeled_phase()
    assert trainer.current_epoch == 5 and trainer.current_unlabeled_weight() > 0


def test_non_finite_loss_stops_training_with_the_cases_named(planned_toy, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerMeanTeacher_warmup, planned_toy, monkeypatch, tmp_path)  # labeled-only step
    data = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    data[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        outputs = trainer.network(torch.zeros_like(data))
    labels = (data.nan_to_num() > 0).long()
    with pytest.raises(CPS4Error) as info:
        trainer.train_step({"data": data, "target": labels_like_outputs(labels, outputs), "keys": ["c0", "c3"]})
    message = str(info.value)
    assert "non-finite loss" in message and "supervised (labeled batch)" in message and "c0, c3" in message


def test_ordered_pseudo_labels_put_the_levels_back_in_spine_order(planned_toy, monkeypatch, tmp_path):
    import numpy as np

    from nnunet_cps4.data.layout import MRSPINESEG_LABELS
    from nnunet_cps4.experiments.variants import nnUNetTrainerMeanTeacher_ordered
    from nnunet_cps4.method.prompts import load_shipped_prompts
    from nnunet_cps4.method.spine_order import LevelOrder

    # the toy dataset declares no spine order: the ordered variant says so before training
    with pytest.raises(CPS4Error, match="declare no spine order"):
        _trainer(nnUNetTrainerMeanTeacher_ordered, planned_toy, monkeypatch, tmp_path)

    class _Ordered(nnUNetTrainerMeanTeacher):
        pseudo_ignore_label = 99

    trainer = _Ordered.__new__(_Ordered)  # only the ordering step is exercised
    trainer.level_order = LevelOrder.from_prompts(load_shipped_prompts("mrspineseg", {"labels": MRSPINESEG_LABELS}))
    trainer.spine_patch_axis = 0  # rows run head to feet
    ids = MRSPINESEG_LABELS
    truth = np.zeros((60, 10), np.int64)
    rows = [("L3", 4), ("L3/L4", 3), ("L4", 4), ("L4/L5", 3), ("L5", 4), ("L5/S", 3), ("S", 6)]
    y = 8
    for name, height in rows:  # from the top down to the sacrum
        truth[y:y + height, 2:8] = ids[name]
        y += height + 1
    swapped = truth.copy()
    swapped[truth == ids["L4"]], swapped[truth == ids["L5"]] = ids["L5"], ids["L4"]
    labels = torch.from_numpy(swapped)[None, None]
    probs = torch.nn.functional.one_hot(labels[:, 0], 20).permute(0, 3, 1, 2).float()
    assert torch.equal(trainer.ordered_levels(labels, probs)[0, 0], torch.from_numpy(truth))
    trainer.level_order = None  # without ordering the labels pass unchanged
    assert torch.equal(trainer.ordered_levels(labels, probs), labels)


def test_the_semi_supervised_trainers_order_their_pseudo_labels_on_spine_datasets_by_default(monkeypatch):
    """The mean teacher and CPS4 align their pseudo labels to the spine order where the prompt file declares one;
    dataset.json "cps4": {"order_pseudo_labels": ...} or a variant's class attribute decides over both, and a
    bad value names the key."""
    from types import SimpleNamespace

    from nnunet_cps4.experiments.variants import nnUNetTrainerCPS4_wholeCase, nnUNetTrainerMeanTeacher_wholeCase

    def resolved(cls, spine: bool, cps4=None) -> bool:
        trainer = cls.__new__(cls)  # only the setting is resolved
        trainer.dataset_json = {"labels": {"background": 0, "a": 1}, **({"cps4": cps4} if cps4 is not None else {})}
        trainer.plans_manager = SimpleNamespace(dataset_name="Dataset501_Toy")
        trainer._is_spine_dataset = spine
        return trainer.orders_pseudo_labels()

    assert resolved(nnUNetTrainerMeanTeacher, spine=True)
    assert not resolved(nnUNetTrainerMeanTeacher, spine=False)  # nothing to order by
    assert resolved(nnUNetTrainerCPS4, spine=True)
    assert not resolved(nnUNetTrainerCPS4_wholeCase, spine=True)  # the documented unordered CPS4 row
    assert not resolved(nnUNetTrainerCPS4, spine=True, cps4={"order_pseudo_labels": False})
    assert not resolved(nnUNetTrainerMeanTeacher, spine=True, cps4={"order_pseudo_labels": False})
    assert resolved(nnUNetTrainerCPS4, spine=True, cps4={"order_pseudo_labels": True})
    assert not resolved(nnUNetTrainerMeanTeacher_wholeCase, spine=True, cps4={"order_pseudo_labels": True})
    with pytest.raises(CPS4Error, match=r"cps4\.order_pseudo_labels' must be true or false"):
        resolved(nnUNetTrainerMeanTeacher, spine=True, cps4={"order_pseudo_labels": "yes"})


class _SignTeacher(torch.nn.Module):
    """Stands in for the teacher: class 1 where the image is bright, 0 where it is dark, unsure near 0."""

    def forward(self, x):
        return torch.cat((-4 * x, 4 * x, torch.full_like(x, -20.0)), 1)


def test_whole_case_teacher_labels_are_made_on_schedule_and_travel_with_the_augmented_image(
        planned_toy, monkeypatch, tmp_path):
    import numpy as np

    from nnunet_cps4.experiments.variants import nnUNetTrainerMeanTeacher_wholeCase
    from nnunet_cps4.nnunet.teacher_label_cache import MANIFEST, decode_labels

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # the batch below from this process's augmentation
    trainer = _trainer(nnUNetTrainerMeanTeacher_wholeCase, planned_toy, monkeypatch, tmp_path)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 10, 4  # unlabeled loss from epoch 5, refresh every 2
    trainer.prepare_semi_supervised()
    trainer.dataloader_unlabeled = trainer.get_unlabeled_dataloader()
    ignore = trainer.pseudo_ignore_label
    assert [e for e in range(10) if trainer.is_teacher_label_epoch(e)] == list(range(5, 10))  # none made yet

    trainer.teacher = _SignTeacher()
    trainer.current_epoch = 5
    trainer.make_teacher_labels()
    assert [e for e in range(10) if trainer.is_teacher_label_epoch(e)] == [5, 7, 9]
    folder = os.path.join(trainer.output_folder, "teacher_labels")
    assert trainer.unlabeled_maps_folder() == folder
    manifest = load_json(os.path.join(folder, MANIFEST))
    unlabeled = trainer.dataset_class(trainer.unlabeled_folder)
    assert manifest["epoch"] == 5 and manifest["cases"] == sorted(unlabeled.identifiers) and len(manifest["cases"]) == 4
    # each whole case is labelled from its un-augmented image: bright -> 1, dark -> 0, unsure (|x| small) -> none
    for case in manifest["cases"]:
        image = torch.from_numpy(np.asarray(unlabeled.load_case(case)[0][:]))[0]
        codes = np.asarray(trainer.dataset_class(trainer.unlabeled_folder, folder_with_segs_from_previous_stage=folder)
                           .load_case(case)[2][:])
        stored = decode_labels(torch.from_numpy(codes)[None, None], ignore)[0, 0]
        assert stored.shape == image.shape
        sure = image.abs() > 0.3
        assert torch.equal(stored[sure], (image[sure] > 0).long())
        assert (stored[image.abs() < 0.2] == ignore).all()

    # the loader moves them with the image through nnU-Net's augmentation: on an augmented batch they still mark
    # the bright pixels (intensity augmentation can move a few across 0; padding is unsupervised)
    np.random.seed(0)
    torch.manual_seed(0)
    batch = next(trainer.dataloader_unlabeled)
    labels = decode_labels(batch["target"][:, -1:], ignore)
    data = batch["data"]
    supervised = labels != ignore
    agreement = ((data > 0).long() == labels)[supervised].float().mean().item()
    assert supervised.float().mean() > 0.3 and agreement > 0.8, agreement
    shifted = torch.roll(labels, 5, dims=-1)  # the same labels off by 5 pixels agree clearly less (about 0.55)
    assert ((data > 0).long() == shifted)[shifted != ignore].float().mean().item() < agreement - 0.15

    # an unlabeled step trains on them: no teacher pass on the batch, the stored labels as targets
    trainer.teacher = None  # a teacher pass would fail
    trainer.global_step = 7 * trainer.num_iterations_per_epoch
    labeled = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        outputs = trainer.network(labeled)
    monkeypatch.setattr(trainer, "update_teacher", lambda: None)
    result = trainer.train_step({"data": labeled, "target": labels_like_outputs((labeled > 0).long(), outputs)})
    assert result["ssl_lambda"] > 0 and np.isfinite(result["unlabeled_loss"]) and result["unlabeled_loss"] != 0
    # logged: the rule's statistics of the stored whole-case labels, and the ignored share of this batch
    assert result["teacher_confidence"] == pytest.approx(manifest["stats"]["teacher_confidence"])
    assert manifest["weight"] == 1.0 and 0 <= result["pseudo_label_ignored"] < 1


def test_rule_comparison_counts_what_each_rule_supervises_and_its_level_confusions():
    from nnunet_cps4.experiments.pseudo_label_rules import IGNORE, _Complementarity, _Counts, rule_targets

    # 1 x 4 pixels, truth [1, 2, 0, 2]; the teacher says [1, 1, 0, 2] confidently; the VLM fires 2 on pixel 1 only
    teacher = torch.softmax(_logits(torch.tensor([[1, 1, 0, 2]]), torch.tensor([[0.98, 0.97, 0.99, 0.5]])), 1)[0]
    vlm = torch.full((2, 1, 4), 0.01)
    vlm[1, 0, 1] = 0.99
    vlm[0, 0, 0] = 0.3   # a little structure so Otsu has two classes in map 1, which stays below min_peak
    targets = rule_targets(teacher, vlm)
    assert targets["mean teacher"][0].tolist() == [1, 1, 0, IGNORE]     # the unsure pixel 3 is cut
    assert targets["level_veto"][0].tolist() == [1, IGNORE, 0, IGNORE]  # the level confusion on pixel 1 is vetoed
    ref = torch.tensor([[1, 2, 0, 2]])
    counts = {}
    for rule in ("mean teacher", "level_veto"):
        counts[rule] = _Counts(2)
        counts[rule].add(targets[rule], ref)
    mean_teacher, veto = counts["mean teacher"].summary(), counts["level_veto"].summary()
    assert mean_teacher["supervised_percent"] == 75.0 and mean_teacher["level_confusion_percent"] == 25.0
    assert veto["supervised_percent"] == 50.0 and veto["wrong_percent"] == 0.0
    assert mean_teacher["foreground_precision_percent"] == 50.0  # class 1: 1 of 2 right; class 2 never labelled
    # the VLM's fused map is [0, 2, 0, 0]: it is right where the confident teacher is wrong (pixel 1) and wrong on
    # pixels 0 and 3, where the teacher is right (pixel 3 only by its argmax, below the cut)
    assert targets["confirm"][0].tolist() == [1, 1, 0, IGNORE]  # pixel 3: the VLM does not name class 2
    both = _Complementarity()
    both.add(teacher, torch.tensor([[0, 2, 0, 0]]), ref, 0.9)
    assert both.summary() == {"teacher_wrong_vlm_right_confident_percent": 25.0,
                              "teacher_wrong_vlm_right_unsure_percent": 0.0, "teacher_wrong_vlm_wrong_percent": 0.0,
                              "teacher_right_vlm_wrong_confident_percent": 25.0,
                              "teacher_right_vlm_wrong_unsure_percent": 25.0}
