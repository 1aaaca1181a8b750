"""The pseudo-label rule of stage (ii): VLM maps and teacher prediction -> the student's targets.

One object, `PseudoLabelRule`, holds every setting of the chain and applies it, so that training, the
pseudo-label analysis and `nnUNetv2_cps4_predict_vlm` use the same rule and a checkpoint can store it:

1. binarise each per-class VLM probability map (Otsu per image and class, or a fixed threshold; a class whose
   peak is below `min_peak` fires nowhere) and fuse the binary maps into one label map y_text
   (`nnunet_cps4.method.fusion`);
2. refine the teacher's prediction with the VLM (`combination`):
   - "vote": argmax(softmax(teacher) + w * vote), the vote being the fused class with its own probability
     (background: 1 - max_c p_c); with `silent_defers` the teacher alone decides where no class map fires;
   - "level_veto": the teacher's label and confidence stand, except where the teacher says one foreground class
     and a VLM map fires another one (a level confusion): there the pixel is left unsupervised. The VLM never
     relabels a pixel, never removes background or agreeing pixels, and never adds one the teacher is unsure of;
   - "confirm": the opposite direction: the teacher's label and confidence stand, and a pixel the teacher is
     unsure of (below the cut) is kept where the VLM's fused map names the same class (background: no map fires).
     The VLM never removes or relabels a pixel; it only adds the ones it confirms;
3. confidence cut: pixels whose winning vote, normalised by 1 + w ("vote"), or the teacher's own confidence
   ("level_veto", "confirm"; a confirmed pixel counts as certain) is below `confidence_threshold` are left
   unsupervised (the mean teacher applies the same cut to the teacher's own softmax); a vetoed pixel is left
   unsupervised even with the cut switched off.

Everything is plain torch, batched, on the tensors' device, without autograd.
"""
from dataclasses import asdict, dataclass, fields, replace
from typing import Tuple

import torch

from nnunet_cps4.method.fusion import BINARIZE_METHODS, fuse_maps, labels_to_probabilities

COMBINATIONS = ("vote", "level_veto", "confirm")
VETOED = -1.0  # the confidence `refine` gives a vetoed pixel: `confident` drops it, also with the cut switched off

# trainer attribute names under which checkpoints written before this object existed stored the rule
_LEGACY_SETTINGS = {"binarize_method": "binarize_method", "fixed_threshold": "fixed_threshold",
                    "min_peak": "min_peak", "text_combination_weight": "text_weight",
                    "text_silent_defers": "silent_defers", "text_silent_ignored": "silent_text_ignored",
                    "pseudo_label_threshold": "confidence_threshold"}


@dataclass(frozen=True)
class PseudoLabelRule:
    binarize_method: str = "otsu"        # "otsu" (paper) | "fixed"
    fixed_threshold: float = 0.5         # for binarize_method "fixed"
    min_peak: float = 0.5                # a class map whose peak is below this fires nowhere (Otsu)
    text_weight: float = 1.0             # w in argmax(softmax(teacher) + w * VLM vote)
    silent_defers: bool = False          # where no class map fires, the teacher's label and confidence stand
    silent_text_ignored: bool = True     # in the y_text target, pixels where no map fires are unsupervised
    confidence_threshold: float = 0.9    # normalised vote below this: unsupervised (0 switches the cut off)
    combination: str = "vote"            # how the VLM changes the teacher's label: "vote" | "level_veto" | "confirm"

    def __post_init__(self):
        if self.binarize_method not in BINARIZE_METHODS:
            raise ValueError(f"binarize_method must be one of {BINARIZE_METHODS}, got {self.binarize_method!r}")
        if self.combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {COMBINATIONS}, got {self.combination!r}")

    # --- serialisation (checkpoints, logs) --------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PseudoLabelRule":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def from_settings(cls, settings: dict) -> "PseudoLabelRule":
        """The rule stored in a trainer's checkpoint settings, also from checkpoints that stored it as loose
        trainer attributes (before this object existed)."""
        if "pseudo_label_rule" in settings:
            return cls.from_dict(settings["pseudo_label_rule"])
        return cls(**{new: settings[old] for old, new in _LEGACY_SETTINGS.items() if old in settings})

    def with_settings(self, **changes) -> "PseudoLabelRule":
        return replace(self, **changes)

    # --- the chain ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, probs: torch.Tensor) -> torch.Tensor:
        """y_text (B, *S), labels 0..C, from per-class probabilities (B, C, *S) (steps 1)."""
        return fuse_maps(probs, self.binarize_method, self.fixed_threshold, self.min_peak)

    @torch.no_grad()
    def refine(self, teacher_probs: torch.Tensor, probs: torch.Tensor, y_text: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(winning vote normalised to [0, 1], or VETOED, refined labels), both (B, 1, *S), before the confidence
        cut.

        teacher_probs (B, C + 1, *S) softmax of the teacher; probs (B, C, *S) the VLM's per-class
        probabilities; y_text (B, *S) their fused map.
        """
        return self.refine_with_vote(teacher_probs, text_vote(y_text, probs), y_text)

    @torch.no_grad()
    def refine_with_vote(self, teacher_probs: torch.Tensor, vote: torch.Tensor, y_text: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`refine` from the VLM's vote (B, C + 1, *S) (`text_vote`, or a stored copy of it) instead of its
        probabilities."""
        if self.combination in ("level_veto", "confirm"):
            confidence, labels = teacher_probs.max(1, keepdim=True)
            fired = y_text.unsqueeze(1)
            if self.combination == "confirm":  # an unsure pixel the VLM names alike passes the cut
                return torch.where(fired == labels, torch.ones_like(confidence), confidence), labels
            confusion = (labels > 0) & (fired > 0) & (fired != labels)
            return torch.where(confusion, torch.full_like(confidence, VETOED), confidence), labels
        vote, labels = (teacher_probs + self.text_weight * vote).max(1, keepdim=True)
        vote = vote / (1 + self.text_weight)
        if self.silent_defers:
            silent = (y_text == 0).unsqueeze(1)
            teacher_vote, teacher_labels = teacher_probs.max(1, keepdim=True)
            vote, labels = torch.where(silent, teacher_vote, vote), torch.where(silent, teacher_labels, labels)
        return vote, labels

    def confident(self, labels: torch.Tensor, confidence: torch.Tensor, ignore_value: int) -> torch.Tensor:
        """labels with every pixel whose confidence is below the threshold set to ignore_value (step 3); vetoed
        pixels (`refine` with "level_veto") also when the cut is switched off."""
        drop = confidence <= VETOED
        if self.confidence_threshold > 0:
            drop = drop | (confidence < self.confidence_threshold)
        return torch.where(drop, torch.full_like(labels, ignore_value), labels)

    def text_target(self, y_text: torch.Tensor, ignore_value: int) -> torch.Tensor:
        """y_text as a target (B, 1, *S): silent pixels unsupervised unless `silent_text_ignored` is off."""
        y_text = y_text.unsqueeze(1)
        if self.silent_text_ignored:
            y_text = torch.where(y_text == 0, torch.full_like(y_text, ignore_value), y_text)
        return y_text


@torch.no_grad()
def text_vote(y_text: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The VLM's vote as class probabilities, (B, C + 1, *S): one non-zero entry per pixel, the fused class k
    with its own probability p_k; a background pixel gets 1 - max_c p_c."""
    stacked = with_background(probs)
    return labels_to_probabilities(y_text, probs.shape[1] + 1, dtype=probs.dtype) * \
        stacked.gather(1, y_text.long().unsqueeze(1))


def with_background(probs: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities (B, C, *S) with a background channel 1 - max_c p_c in front: (B, C + 1, *S), channel =
    label value (the VLM's maps as nnU-Net's predictor and the spine ordering expect them)."""
    return torch.cat((1 - probs.max(dim=1, keepdim=True)[0], probs), dim=1)
