"""The phantom's fields of view: the whole spine (S ... T9, MRSpineSeg labels) or the lumbar spine alone.

"spine" is the rendered image as it is (fixed `FOV_MM`, labels S, L5 ... T9 and their discs). "lumbar" crops the
rendered subject to a `LUMBAR_SI_MM` window along the superior-inferior axis, placed on the subject's own anatomy
(from just above L1 down into the sacrum, with a random margin), and relabels it to `LUMBAR_LABELS` (sacrum,
L5 ... L1, discs L5/S ... L1/L2): what a lumbar MR protocol covers and labels. T12 and the T12/L1 disc may show at
the top edge unlabeled, as on a real lumbar scan. Fewer rows and classes make a problem small enough to train to
convergence on a CPU within minutes (the README's main job). Same spacing, orientation and appearance as "spine".
"""
from typing import Dict, Sequence, Tuple

import numpy as np

from nnunet_cps4.data.layout import LUMBAR_LABELS, MRSPINESEG_LABELS
from nnunet_cps4.data.phantom.anatomy import FOV_MM, _corner, spacing_for
from nnunet_cps4.errors import CPS4Error

FIELDS = ("spine", "lumbar")
DEFAULT_FIELD = "spine"
#: superior-inferior extent of the lumbar field of view (mm)
LUMBAR_SI_MM = 240.0
#: the window's top lies this far (mm, uniform) above the top of L1
_TOP_MARGIN_MM = (4.0, 24.0)
#: ... and its bottom at least this far below the top of S1 (L5/S disc and the upper sacrum always in view)
_SACRUM_IN_VIEW_MM = 18.0


def check_field(field: str) -> str:
    if field not in FIELDS:
        raise CPS4Error(f"--field {field!r} is not a phantom field of view. Fix: use one of {list(FIELDS)} "
                        f"('spine': S to T9, 'lumbar': S to L1)")
    return field


def field_labels(field: str) -> Dict[str, int]:
    """dataset.json labels of a field of view."""
    return dict(LUMBAR_LABELS if check_field(field) == "lumbar" else MRSPINESEG_LABELS)


def field_prompt_file(field: str) -> str:
    """The shipped prompt file of a field of view's label set."""
    return "mrspineseg_lumbar" if check_field(field) == "lumbar" else "mrspineseg"


def field_fov_mm(field: str) -> Tuple[float, float, float]:
    """Physical field of view (LR, SI, AP) in mm."""
    if check_field(field) == "lumbar":
        return FOV_MM[0], LUMBAR_SI_MM, FOV_MM[2]
    return FOV_MM


def field_size(field: str, size: Sequence[int]) -> Tuple[int, int, int]:
    """Array size (LR, SI, AP) of a case of the field of view rendered at `size` (the whole-spine grid)."""
    nz, ny, nx = (int(v) for v in size)
    if check_field(field) == "lumbar":
        ny = lumbar_rows(size)
    return nz, ny, nx


def lumbar_rows(size: Sequence[int]) -> int:
    """Rows of the lumbar window on the whole-spine grid `size` (same spacing)."""
    return int(round(LUMBAR_SI_MM / spacing_for(size)[1]))


# MRSpineSeg id -> lumbar id (0 for the thoracic levels, which a lumbar field leaves unlabeled)
_TO_LUMBAR = np.zeros(max(MRSPINESEG_LABELS.values()) + 1, dtype=np.uint8)
for _name, _value in LUMBAR_LABELS.items():
    _TO_LUMBAR[MRSPINESEG_LABELS[_name]] = _value


def crop_to_field(field: str, image: np.ndarray, label: np.ndarray, subject: dict,
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A rendered whole-spine case (image, label with MRSpineSeg ids; LR x SI x AP) in the given field of view."""
    if check_field(field) == "spine":
        return image, label
    ny, sy = image.shape[1], spacing_for(image.shape)[1]
    rows = lumbar_rows(image.shape)
    l1, s1 = subject["vertebrae"][4], subject["sacrum"][0]
    l1_top = max(_corner(l1, +1, 0.0)[0], _corner(l1, +1, 1.0)[0])   # Y: 0 at the image's top edge, negative down
    s1_top = min(_corner(s1, +1, 0.0)[0], _corner(s1, +1, 1.0)[0])
    top = l1_top + rng.uniform(*_TOP_MARGIN_MM)
    top = min(top, s1_top - _SACRUM_IN_VIEW_MM + rows * sy)          # keep the sacrum in view (a tall subject)
    first = int(np.clip(np.floor(-top / sy), 0, ny - rows))
    window = slice(first, first + rows)
    return (np.ascontiguousarray(image[:, window]),
            _TO_LUMBAR[np.ascontiguousarray(label[:, window])])
