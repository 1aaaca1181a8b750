"""Pseudo-label rules side by side on unlabeled training cases: which pixels each rule supervises, and how many of
them carry a wrong label — the analysis the rule of `nnUNetTrainerCPS4` is chosen on (never test cases).

For every unlabeled case with a known true label, each teacher (a supervised checkpoint: the teacher as the
unlabeled phase starts; a mean-teacher or CPS4 checkpoint: its final teacher) predicts the whole case (nnU-Net's
sliding-window predictor, no mirroring), the VLM of a CPS4 or stage-(i) checkpoint gives its per-class maps, and
each rule forms the student's targets exactly as in training (`PseudoLabelRule.refine` + `confident`):

- "mean teacher": the teacher's label where its probability reaches the cut (no VLM);
- "vote": CPS4's vote rule (`silent_defers`, the default until the level veto);
- "level_veto": the teacher's labels, minus the pixels where the VLM fires another level;
- "confirm": the teacher's labels, plus the pixels below its cut where the VLM names the same class.

Per rule and teacher, over all pixels of all cases: supervised (% of pixels), wrong (% of pixels supervised with a
label other than the true one), level confusions (% of pixels supervised with one foreground class where the truth
is another foreground class: the labels-on-the-wrong-vertebra errors self-training amplifies) and foreground
precision (mean over classes of correct / supervised pixels of the class).

    python -m nnunet_cps4.experiments.pseudo_label_rules -t SUPERVISED_MODEL [-t MODEL ...] --vlm CPS4_MODEL \\
        -i RAW_SPLIT -r REFERENCE_LABELS [-f all] [--limit 40] [-o rules.json]

Model folders are nnU-Net result folders (``<trainer>__<plans>__<configuration>``); RAW_SPLIT a raw dataset with
imagesUnlabeled/; REFERENCE_LABELS the true labels of (some of) its unlabeled cases (the phantom's
labelsUnlabeledReference, or a benchmark source's labelsTr).
"""
import argparse
import json
import os
from typing import Dict, List

import numpy as np
import torch

from nnunet_cps4.experiments.pseudo_label_quality import trained_sources, unlabeled_cases_with_references
from nnunet_cps4.method.pseudo_labels import PseudoLabelRule
from nnunet_cps4.nnunet.vlm_prediction import vlm_probabilities

IGNORE = -1
RULES: Dict[str, PseudoLabelRule] = {"mean teacher": PseudoLabelRule(),
                                     "vote": PseudoLabelRule(silent_defers=True),
                                     "level_veto": PseudoLabelRule(combination="level_veto"),
                                     "confirm": PseudoLabelRule(combination="confirm")}


@torch.no_grad()
def rule_targets(teacher_probs: torch.Tensor, probs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{rule: the student's target (*S), IGNORE where unsupervised} for one case: teacher softmax (C + 1, *S), VLM
    probabilities (C, *S)."""
    targets = {}
    for name, rule in RULES.items():
        if name == "mean teacher":
            confidence, labels = teacher_probs.max(0, keepdim=True)
            targets[name] = rule.confident(labels, confidence, IGNORE)[0]
            continue
        y_text = rule.fuse(probs[None])
        confidence, labels = rule.refine(teacher_probs[None], probs[None], y_text)
        targets[name] = rule.confident(labels, confidence, IGNORE)[0, 0]
    return targets


class _Complementarity:
    """Where the teacher's and the VLM's labels are right and wrong, per cent of all pixels."""

    def __init__(self):
        self.pixels = 0
        self.counts = {"teacher_wrong_vlm_right_confident": 0, "teacher_wrong_vlm_right_unsure": 0,
                       "teacher_wrong_vlm_wrong": 0, "teacher_right_vlm_wrong_confident": 0,
                       "teacher_right_vlm_wrong_unsure": 0}

    def add(self, teacher_probs: torch.Tensor, y_text: torch.Tensor, ref: torch.Tensor, cut: float) -> None:
        confidence, teacher = teacher_probs.max(0)
        teacher_wrong, vlm_wrong = teacher != ref, y_text != ref
        self.pixels += ref.numel()
        unsure = confidence < cut
        for key, mask in (("teacher_wrong_vlm_right", teacher_wrong & ~vlm_wrong),
                          ("teacher_right_vlm_wrong", ~teacher_wrong & vlm_wrong)):
            self.counts[f"{key}_confident"] += int((mask & ~unsure).sum())
            self.counts[f"{key}_unsure"] += int((mask & unsure).sum())
        self.counts["teacher_wrong_vlm_wrong"] += int((teacher_wrong & vlm_wrong).sum())

    def summary(self) -> dict:
        return {f"{key}_percent": 100 * n / self.pixels for key, n in self.counts.items()}


class _Counts:
    def __init__(self, num_classes: int):
        self.pixels = self.supervised = self.wrong = self.confusions = 0
        self.correct = np.zeros(num_classes)
        self.labelled = np.zeros(num_classes)

    def add(self, target: torch.Tensor, ref: torch.Tensor) -> None:
        supervised = target != IGNORE
        wrong = supervised & (target != ref)
        self.pixels += ref.numel()
        self.supervised += int(supervised.sum())
        self.wrong += int(wrong.sum())
        self.confusions += int((wrong & (target > 0) & (ref > 0)).sum())
        for c in range(1, len(self.correct) + 1):
            self.labelled[c - 1] += int((target == c).sum())
            self.correct[c - 1] += int(((target == c) & (ref == c)).sum())

    def summary(self) -> dict:
        present = self.labelled > 0
        return {"supervised_percent": 100 * self.supervised / self.pixels,
                "wrong_percent": 100 * self.wrong / self.pixels,
                "level_confusion_percent": 100 * self.confusions / self.pixels,
                "foreground_precision_percent": float(100 * np.mean(self.correct[present] / self.labelled[present]))}


@torch.no_grad()
def compare_rules(teacher_models: List[str], vlm_model: str, cases: Dict[str, List[str]], references: Dict[str, str],
                  fold="all", device: torch.device = torch.device("cpu")) -> dict:
    """{teacher model name: {rule: counts summary}} over `cases` (see the module docstring)."""
    vlm = trained_sources(vlm_model, fold, device)
    if vlm.vlm is None:
        raise ValueError(f"{vlm_model} holds no VLM: pass a CPS4 or stage-(i) model folder as --vlm")
    teachers = {os.path.basename(m): trained_sources(m, fold, device) for m in teacher_models}
    for name, t in teachers.items():
        if t.teacher is None:
            raise ValueError(f"{name} holds no teacher or network: pass a supervised, mean-teacher or CPS4 model")
    preprocessor = vlm.configuration_manager.preprocessor_class(verbose=False)
    num_classes = len(vlm.plans_manager.get_label_manager(vlm.dataset_json).foreground_labels)
    counts = {t: {r: _Counts(num_classes) for r in RULES} for t in teachers}
    complementarity = {t: _Complementarity() for t in teachers}
    cut = RULES["mean teacher"].confidence_threshold
    for case, files in sorted(cases.items()):
        data, ref, _ = preprocessor.run_case(files, references[case], vlm.plans_manager, vlm.configuration_manager,
                                             vlm.dataset_json)
        data, ref = torch.from_numpy(data), torch.from_numpy(ref[0]).long()
        probs = vlm_probabilities(vlm.vlm, data)
        y_text = RULES["vote"].fuse(probs[None])[0]  # the VLM's fused map, the same for every teacher
        for name, t in teachers.items():
            teacher_probs = torch.softmax(t.teacher.predict_sliding_window_return_logits(data).float().cpu(), 0)
            for rule, target in rule_targets(teacher_probs, probs).items():
                counts[name][rule].add(target, ref)
            complementarity[name].add(teacher_probs, y_text, ref, cut)
    return {"cases": sorted(cases), "vlm": os.path.basename(vlm_model),
            "results": {t: {r: c.summary() for r, c in rules.items()} for t, rules in counts.items()},
            "complementarity": {t: c.summary() for t, c in complementarity.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-t", "--teacher", action="append", required=True, help="model folder of a teacher")
    parser.add_argument("--vlm", required=True, help="model folder of a CPS4 or stage-(i) model (its VLM)")
    parser.add_argument("-i", required=True, help="raw split dataset with imagesUnlabeled/")
    parser.add_argument("-r", required=True, help="folder with the true labels of its unlabeled cases")
    parser.add_argument("-f", default="all", help="fold (default all)")
    parser.add_argument("--limit", type=int, default=40, help="unlabeled cases to score (default 40)")
    parser.add_argument("-o", help="write the result as JSON here")
    args = parser.parse_args()
    with open(os.path.join(args.i, "dataset.json")) as f:
        dataset_json = json.load(f)
    cases, refs = unlabeled_cases_with_references(args.i, args.r, dataset_json["file_ending"],
                                                  len(dataset_json["channel_names"]), args.limit)
    result = compare_rules(args.teacher, args.vlm, cases, refs, args.f)
    for teacher, rules in result["results"].items():
        for rule, s in rules.items():
            print(f"{teacher} | {rule} | supervised {s['supervised_percent']:.2f} % | wrong {s['wrong_percent']:.3f} % "
                  f"| level confusions {s['level_confusion_percent']:.3f} % | foreground precision "
                  f"{s['foreground_precision_percent']:.2f} %")
    for teacher, c in result["complementarity"].items():
        print(f"{teacher} | per cent of pixels: " +
              ", ".join(f"{k.removesuffix('_percent')} {v:.3f}" for k, v in c.items()))
    if args.o:
        with open(args.o, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
