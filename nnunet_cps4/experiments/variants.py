"""Method experiments as data: one table row per variant (name -> base trainer, settings, why), and the short
CPU schedules the benchmark runs them with.

The benchmark materialises every row (and every schedule of every public and experimental trainer) as classes of
this module and points nnUNet_extTrainer at `ext_trainers/` beside it, so `nnUNetv2_train`, `nnUNetv2_predict` and
the plugin's commands find them during its runs; they never enter a user's `-tr` namespace. A row changes class
attributes only: plain values, or field updates of a dataclass attribute (`pseudo_label_rule`, `vlm_config`), or
`vlm_trainer` (the name of the stage-(i) trainer a CPS4 row uses). How each variant did is in docs/BENCHMARKS.md.
"""
import os
from dataclasses import is_dataclass, replace
from typing import Dict, NamedTuple

from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.nnunet.trainers import registry
from nnunet_cps4.nnunet.trainers.schedules import SCHEDULES, with_schedule

# the benchmark's schedules on 2 CPU cores (nnU-Net's own lengths are in schedules.SCHEDULES)
BENCHMARK_SCHEDULES: Dict[str, dict] = {
    # tests and quick checks: 2 epochs x 10 iterations, 2 validation iterations, a checkpoint every epoch
    "smoke": dict(epochs=2, iterations_per_epoch=10, val_iterations_per_epoch=2, save_every=1),
    # tests of the pipeline, not of learning (the benchmark's tiny preset, stage (i) with LiteMedSAM's encoder, 3d):
    # 2 epochs x 3 iterations
    "tick": dict(epochs=2, iterations_per_epoch=3, val_iterations_per_epoch=1, save_every=1),
    # the README's main job (nnUNetv2_cps4_benchmark --preset demo, lumbar phantom): within its 15-minute budget on
    # 2 CPU cores, long enough for supervised nnU-Net to come near its plateau (docs/BENCHMARKS.md)
    "demo": dict(epochs=50, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=10),
    # the main job's schedule until the lumbar phantom (whole-spine phantom, 1250 iterations)
    "cpu1250": dict(epochs=25, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=10),
    # docs/BENCHMARKS.md on 2 CPU cores: 2500, 5000 and 10000 iterations (the longer ones show where a shorter
    # schedule's result stands against its own plateau)
    "cpu2500": dict(epochs=50, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=25),
    "cpu5k": dict(epochs=100, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=25),
    "cpu10k": dict(epochs=200, iterations_per_epoch=50, val_iterations_per_epoch=2, save_every=25),
    # stage (i) with LiteMedSAM's encoder run on every augmented batch (about 1.2 s per slice on 2 CPU cores)
    "cpu250": dict(epochs=10, iterations_per_epoch=25, val_iterations_per_epoch=2, save_every=5),
}
for _settings in BENCHMARK_SCHEDULES.values():
    # the benchmark trains fold 'all' and evaluates on its own test cases; nnU-Net's final validation of fold 'all'
    # would predict every training case for a number nobody reads
    _settings["validate_fold_all"] = False
ALL_SCHEDULES = {**SCHEDULES, **BENCHMARK_SCHEDULES}


class Variant(NamedTuple):
    base: str        # a public trainer or an earlier row
    settings: dict   # class attributes to change
    why: str         # what it tests


# labeled cases alone for the first half of the schedule, then lambda ramps to its maximum over the next 20 %
_WARMUP = {"unlabeled_start_fraction": 0.5, "rampup_fraction": 0.2}

# The defaults changed on 2026-12-02 (warm-up + Dice+CE for the mean teacher, the VLM as a veto for CPS4; then the
# teacher labelling whole un-augmented cases) and on 2026-12-03 (the mean teacher's spine ordering). The rows measured
# before build on the earlier defaults, kept as rows of their own, so every documented command still trains what its
# table measured.
_MT_BEFORE = "nnUNetTrainerMeanTeacher_noWarmup"
_CPS4_BEFORE = "nnUNetTrainerCPS4_paper"
# the mean teacher's settings before those changes (CPS4 inherited them)
_FIRST_DEFAULTS = {"unlabeled_start_fraction": 0.0, "rampup_fraction": 0.4, "pseudo_label_dice_weight": 0.0,
                   "whole_case_teacher_labels": False, "order_pseudo_labels": False}

VARIANTS: Dict[str, Variant] = {
    _MT_BEFORE: Variant(
        "nnUNetTrainerMeanTeacher", dict(_FIRST_DEFAULTS),
        "the mean teacher's default until 2026-12-02: pseudo labels from the first epoch (lambda ramps over 40 %), "
        "cross-entropy alone on the confident pixels"),
    _CPS4_BEFORE: Variant(
        "nnUNetTrainerCPS4", {**_FIRST_DEFAULTS, "text_loss_weight": 1.0, "pseudo_label_rule": {"silent_defers": False}},
        "the paper's stage-(ii) loss as reconstructed, CPS4's default until 2026-12-02: L(student, y_text) + "
        "L(student, refined), cross-entropy, pseudo labels from the first epoch"),
    "nnUNetTrainerMeanTeacher_hardDiceCE": Variant(
        _MT_BEFORE, {"pseudo_label_dice_weight": 1.0, "pseudo_label_rule": {"confidence_threshold": 0.0}},
        "every pixel's hard pseudo label with Dice+CE (the first version)"),
    "nnUNetTrainerMeanTeacher_lowWeight": Variant(
        _MT_BEFORE, {"unlabeled_weight": 0.1},
        "lambda_max 0.1, the consistency weight of the usual segmentation mean-teacher code"),
    "nnUNetTrainerMeanTeacher_warmup": Variant(
        _MT_BEFORE, dict(_WARMUP),
        "pseudo labels only from a teacher that has learnt the labeled cases"),
    "nnUNetTrainerMeanTeacher_warmupDice": Variant(
        _MT_BEFORE, {**_WARMUP, "pseudo_label_dice_weight": 1.0},
        "_warmup with Dice+CE on the confident pixels (CE alone, on mostly-background confident pixels, shrinks "
        "the spine)"),
    "nnUNetTrainerSupervised_noSIMirror": Variant(
        "nnUNetTrainerSupervised", {"mirror_superior_inferior": False},
        "no superior-inferior mirroring in augmentation and test-time augmentation (it swaps the spine's ends)"),
    "nnUNetTrainerMeanTeacher_noSIMirror": Variant(
        _MT_BEFORE, {"mirror_superior_inferior": False}, "the mean teacher without SI mirroring"),
    "nnUNetTrainerMeanTeacher_warmupDiceNoSIMirror": Variant(
        _MT_BEFORE, {**_WARMUP, "pseudo_label_dice_weight": 1.0, "mirror_superior_inferior": False},
        "meanteacher_warmupDice without SI mirroring: does self-training add to no mirroring?"),
    "nnUNetTrainerCPS4VLM_noSIMirror": Variant(
        "nnUNetTrainerCPS4VLM", {"mirror_superior_inferior": False}, "stage (i) without SI mirroring"),
    "nnUNetTrainerCPS4_noSIMirror": Variant(
        _CPS4_BEFORE, {"mirror_superior_inferior": False, "vlm_trainer": "nnUNetTrainerCPS4VLM_noSIMirror"},
        "CPS4 (both stages) without SI mirroring"),
    "nnUNetTrainerMeanTeacher_ordered": Variant(
        _MT_BEFORE, {"order_pseudo_labels": True},
        "the teacher's pseudo labels relabelled in spine order (method/spine_order.py) before the confidence cut"),
    "nnUNetTrainerMeanTeacher_warmupDiceOrdered": Variant(
        _MT_BEFORE, {**_WARMUP, "pseudo_label_dice_weight": 1.0, "order_pseudo_labels": True},
        "meanteacher_warmupDice with spine-ordered pseudo labels"),
    "nnUNetTrainerCPS4_ordered": Variant(
        _CPS4_BEFORE, {"order_pseudo_labels": True},
        "CPS4 with the VLM map and the refined label in spine order"),
    "nnUNetTrainerCPS4VLM_segLoss": Variant(
        "nnUNetTrainerCPS4VLM", {"segmentation_loss_weight": 1.0},
        "attention losses plus nnU-Net's Dice+CE on the similarity maps (not in the paper)"),
    "nnUNetTrainerCPS4VLM_medsam": Variant(
        "nnUNetTrainerCPS4VLM", {"vlm_config": {"vision": "medsam"}},
        "LiteMedSAM's pretrained image encoder (frozen) and a small trainable decoder as vision branch"),
    "nnUNetTrainerCPS4_medsam": Variant(
        "nnUNetTrainerCPS4", {"vlm_trainer": "nnUNetTrainerCPS4VLM_medsam"},
        "CPS4 with the pretrained-encoder VLM (its maps precomputed per unlabeled case)"),
    "nnUNetTrainerCPS4_precomputed": Variant(
        "nnUNetTrainerCPS4", {"precompute_vlm_maps": True, "whole_case_teacher_labels": False},
        "the default VLM's maps precomputed per unlabeled case as for the pretrained encoder: does that change CPS4?"),
    "nnUNetTrainerCPS4VLM_vit": Variant(
        "nnUNetTrainerCPS4VLM", {"vlm_config": {"vision": "vit"}}, "a timm ViT as vision branch (the paper's)"),
    "nnUNetTrainerCPS4_textOnly": Variant(
        _CPS4_BEFORE, {"combined_loss_weight": 0.0}, "pseudo labels from the VLM alone: L(student, y_text)"),
    "nnUNetTrainerCPS4_vlmSegLoss": Variant(
        _CPS4_BEFORE, {"vlm_trainer": "nnUNetTrainerCPS4VLM_segLoss"},
        "CPS4 with the _segLoss VLM"),
    "nnUNetTrainerCPS4_hardDiceCE": Variant(
        _CPS4_BEFORE, {"pseudo_label_dice_weight": 1.0,
                       "pseudo_label_rule": {"confidence_threshold": 0.0, "silent_text_ignored": False}},
        "every pixel supervised with hard labels and Dice+CE, silent VLM pixels as background (the first version)"),
    "nnUNetTrainerCPS4_lowWeight": Variant(_CPS4_BEFORE, {"unlabeled_weight": 0.1}, "lambda_max 0.1"),
    "nnUNetTrainerCPS4_warmup": Variant(_CPS4_BEFORE, dict(_WARMUP), "CPS4 with the labeled-only warm-up"),
    "nnUNetTrainerCPS4_warmupRefinedOnly": Variant(
        _CPS4_BEFORE, {**_WARMUP, "text_loss_weight": 0.0},
        "_warmup without L(student, y_text): the VLM acts only through the refined label"),
    "nnUNetTrainerCPS4_warmupRefinedOnlyDice": Variant(
        _CPS4_BEFORE, {**_WARMUP, "text_loss_weight": 0.0, "pseudo_label_dice_weight": 1.0},
        "_warmupRefinedOnly with Dice+CE on the refined label"),
    "nnUNetTrainerCPS4_warmupDiceVeto": Variant(
        _CPS4_BEFORE, {**_WARMUP, "text_loss_weight": 0.0, "pseudo_label_dice_weight": 1.0,
                       "pseudo_label_rule": {"silent_defers": True}},
        "meanteacher_warmupDice with the VLM as a veto: where a VLM map fires and disagrees the pixel is left out"),
    # measured as rows, then made the defaults (the two rows above are the defaults they replaced)
    # (the mean teacher's default from 2026-12-02 until ordering became its default on 2026-12-03: the documented
    # `meanteacher` rows of that time are this row)
    "nnUNetTrainerMeanTeacher_wholeCase": Variant(
        "nnUNetTrainerMeanTeacher", {"whole_case_teacher_labels": True, "order_pseudo_labels": False},
        "the teacher labels the whole un-augmented unlabeled cases (start of the unlabeled phase, then every 20 % "
        "of the schedule) and the loader moves the labels through the student's augmentation; no spine ordering"),
    # (CPS4's default from 2026-12-02 until ordering became its default on 2026-12-04: the documented `cps4` rows of
    # that time are this row)
    "nnUNetTrainerCPS4_wholeCase": Variant(
        "nnUNetTrainerCPS4", {"whole_case_teacher_labels": True, "order_pseudo_labels": False},
        "CPS4 with whole-case teacher labels, refined by the VLM's whole-case votes; no spine ordering"),
    "nnUNetTrainerMeanTeacher_wholeCaseOrdered": Variant(
        "nnUNetTrainerMeanTeacher", {"order_pseudo_labels": True},
        "the mean teacher with its whole-case labels aligned to the spine order before the confidence cut (its "
        "default on spine datasets since 2026-12-03)"),
    "nnUNetTrainerCPS4_wholeCaseOrdered": Variant(
        "nnUNetTrainerCPS4", {"order_pseudo_labels": True},
        "the default CPS4 with the VLM's votes and the refined whole-case labels aligned to the spine order (its "
        "default on spine datasets since 2026-12-04)"),
    "nnUNetTrainerCPS4_levelVeto": Variant(
        "nnUNetTrainerCPS4", {"pseudo_label_rule": {"combination": "level_veto"}},
        "the teacher's labels (the mean teacher's rule) with one VLM veto: a pixel where the teacher says one level "
        "and a VLM map fires another is left unsupervised; agreeing, background and silent pixels are untouched"),
}


def _materialise(name: str, variant: Variant, namespace: dict) -> type:
    base = namespace[variant.base]
    attributes = {"__module__": __name__, "__qualname__": name, "__doc__": f"{variant.base}: {variant.why}."}
    for key, value in variant.settings.items():
        if key == "vlm_trainer":
            attributes["vlm_trainer_class"] = namespace[value]
            continue
        if not hasattr(base, key):
            raise CPS4Error(f"variant {name}: {variant.base} has no setting {key!r}. Fix the VARIANTS table")
        current = getattr(base, key)
        attributes[key] = replace(current, **value) if is_dataclass(current) and isinstance(value, dict) else value
    return type(name, (base,), attributes)


def _build_namespace() -> Dict[str, type]:
    namespace = {name: getattr(registry, name) for name in registry.__all__}
    for name, variant in VARIANTS.items():
        namespace[name] = _materialise(name, variant, namespace)
    for family in [*registry.FAMILIES, *(namespace[name] for name in VARIANTS)]:
        for schedule, settings in ALL_SCHEDULES.items():
            with_schedule(family, schedule, settings, namespace, __name__)
    return namespace


globals().update(_build_namespace())
__all__ = sorted(name for name in dir() if name.startswith("nnUNetTrainer"))


def method_name(trainer_name: str) -> str:
    """The benchmark's short name of a trainer family: nnUNetTrainerCPS4_noTokenLoss -> cps4_noTokenLoss."""
    family, _, variant = trainer_name[len("nnUNetTrainer"):].partition("_")
    short = {"Supervised": "supervised", "MeanTeacher": "meanteacher", "CPS4": "cps4", "CPS4VLM": "vlm"}[family]
    return f"{short}_{variant}" if variant else short


#: benchmark method name -> trainer family (without schedule): the public families and every row of VARIANTS
METHODS: Dict[str, str] = {method_name(cls.__name__): cls.__name__ for cls in registry.FAMILIES}
METHODS.update({method_name(name): name for name in VARIANTS})
#: offline pseudo-labelling (experiments/offline_pseudo_labels.py): stock nnU-Net retrained on labeled + pseudo-labeled
OFFLINE_PSEUDO_LABELS = "offline_pseudo_labels"
METHODS[OFFLINE_PSEUDO_LABELS] = "nnUNetTrainerSupervised"


def trainer_class(name: str) -> type:
    """Any trainer of the benchmark by name (public, experimental, with or without schedule), else nnU-Net's."""
    return globals()[name] if name in __all__ else registry.find_trainer_class(name)


#: the folder for nnUNet_extTrainer that makes every trainer of this module visible to nnU-Net's commands
EXPERIMENT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")
