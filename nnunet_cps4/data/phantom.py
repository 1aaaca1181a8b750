"""Synthetic sagittal T2 lumbar-spine MR phantom, written as a semi-supervised nnU-Net raw dataset.

`nnUNetv2_cps4_make_phantom -d ID [-n N] [--labeled-fraction F] [--test T] [--seed S] [--size ZxYxX]
[--name NAME] [--overwrite] [--png FILE]` writes `$nnUNet_raw/DatasetID_NAME/` in the layout of
`nnunet_cps4.data.layout` with MRSpineSeg's 19 classes (1 S, 2 L5 ... 10 T9, 11 L5/S ... 19 T9/T10):

```
imagesTr/spine_XXX_0000.nii.gz  labelsTr/spine_XXX.nii.gz     labeled training cases
imagesUnlabeled/spine_XXX_0000.nii.gz                          unlabeled training cases
labelsUnlabeledReference/spine_XXX.nii.gz                      true labels of the unlabeled cases
imagesTs/ labelsTs/                                            test cases
dataset.json  cps4_split.json
```

`labelsUnlabeledReference/` is for analysis only (measuring pseudo-label quality). Trainers, the unlabeled
preprocessing and nnU-Net never read it; a real semi-supervised dataset does not have it.

Geometry. Arrays (SimpleITK `GetArrayFromImage` order) are (LR, SI, AP): axis 0 = sagittal slice index
(left-right, thick slices), axis 1 = rows from superior (row 0) to inferior, axis 2 = columns from anterior
(column 0) to posterior. The physical field of view is fixed at 28 x 400 x 160 mm (LR x SI x AP), so `--size`
only changes the resolution (spacing = field of view / size) and the anatomy keeps its place in the image.
Default size 7 x 160 x 64 -> spacing 4.0 x 2.5 x 2.5 mm. The direction cosines are set to a true sagittal
orientation (columns -> posterior, rows -> inferior, slices -> patient right), so viewers show the image upright.

Anatomy (per subject, all randomised): sacrum (S1-S5 fused, wedge-shaped, tilted by the sacral slope, thin
rudimentary discs), L5-L1 and T12-T8 vertebral bodies (dark cortical rim, textured marrow, occasional
haemangioma), intervertebral discs (bright nucleus, darker annulus, intranuclear cleft; some degenerated: dark,
flat and bulging), pedicles, laminae and spinous processes, the spinal canal with epidural fat, CSF, the cord
down to a conus at T12-L2, the aorta beside the spine, paraspinal muscle, subcutaneous fat, skin, air, abdominal
and thoracic contents. Lateral slices show narrower bodies, less or no CSF and the pedicles.
Variation: vertebra and disc sizes (neighbours overlap), lordosis, kyphosis, sacral slope, in-plane rotation,
AP position, body size, fat thickness, field of view (the top of the image cuts between the middle of T12 and
the top of T9, so the top visible level is T9..T12 and a level can only be identified by counting from the
sacrum), contrast (gamma), Rician noise and a smooth multiplicative bias field (surface-coil fall-off).
Labels are only the vertebral bodies (sacrum included) and the discs; everything else is background 0, as in
MRSpineSeg. No level has an intensity of its own.

Case `i` of a dataset is drawn from `numpy.random.default_rng([seed, i])`, so the same arguments give the same
arrays byte for byte, and a case does not depend on how many cases are generated.
"""
import argparse
import json
import math
import os
import re
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import (MRSPINESEG_LABELS, UNLABELED_FOLDER, create_dataset_folder, make_split,
                                        require_env_folder, write_dataset_json, write_split)
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import PROMPT_FILE_KEY

GENERATOR = "nnunet-cps4 phantom"
PHANTOM_VERSION = 1
REFERENCE_FOLDER = "labelsUnlabeledReference"
CHANNEL_NAMES = {0: "T2"}
FILE_ENDING = ".nii.gz"
DEFAULT_NAME = "SpinePhantom"
DEFAULT_N = 50
DEFAULT_LABELED_FRACTION = 0.05
DEFAULT_TEST = 10
DEFAULT_SEED = 0
#: voxels along (LR, SI, AP)
DEFAULT_SIZE: Tuple[int, int, int] = (7, 160, 64)
#: fixed physical field of view in mm along (LR, SI, AP)
FOV_MM: Tuple[float, float, float] = (28.0, 400.0, 160.0)
MIN_SIZE: Tuple[int, int, int] = (3, 64, 24)
MAX_SIZE: Tuple[int, int, int] = (64, 1024, 512)
MAX_VOXELS = 16 * 512 * 512
#: sub-slices rendered per sagittal slice and averaged (through-plane partial volume of the thick slices)
SUBSLICES = 3

# ------------------------------------------------------------------------------------------------------------
# anatomy tables (mm at body scale 1), listed from the bottom: vertebra index 0 = L5 ... 9 = T8
# ------------------------------------------------------------------------------------------------------------
VERTEBRAE = ["L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8"]
_N_LABELED_VERT = 9                     # L5..T9 carry labels; T8 (and the T8/T9 disc) never enter the image
_BODY_H = [27.0, 28.0, 28.0, 27.5, 26.5, 25.0, 23.5, 22.0, 21.0, 20.0]
_BODY_D = [36.0, 36.0, 35.0, 34.0, 33.0, 31.0, 29.5, 28.0, 27.0, 26.0]
_BODY_W = [25.0, 24.0, 23.5, 23.0, 22.0, 20.5, 19.5, 18.5, 17.5, 17.0]       # half width (LR)
_DISC_H = [11.0, 11.5, 11.0, 10.0, 9.0, 7.5, 6.5, 6.0, 5.5, 5.0]             # disc below vertebra k
_DISC_DEGEN_P = [0.35, 0.35, 0.2, 0.15, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1]
_SEG_ANGLE = [14.0, 11.0, 9.0, 7.0, 4.0, 1.0, -2.0, -3.5, -4.0, -4.0]        # degrees, + = lordotic
_CANAL_D = [17.0, 17.0, 16.5, 16.0, 15.5, 15.0, 14.5, 14.5, 14.0, 14.0]      # bony canal AP depth
_SAC_D = [13.0, 13.5, 13.5, 13.0, 12.5, 12.0, 11.5, 11.5, 11.0, 11.0]        # thecal sac AP depth
_SAC_HW = [8.5, 8.5, 8.5, 8.5, 8.0, 7.5, 7.5, 7.5, 7.5, 7.5]                 # thecal sac half width
_PED_Z = [11.5, 11.0, 11.0, 10.5, 10.5, 10.0, 9.5, 9.5, 9.5, 9.5]            # pedicle inner edge |z|
_SP_ANGLE = [8.0, 8.0, 8.0, 10.0, 14.0, 22.0, 32.0, 38.0, 40.0, 40.0]        # spinous process slope (deg)
_SP_LEN = [26.0, 28.0, 29.0, 29.0, 29.0, 29.0, 30.0, 31.0, 31.0, 31.0]
# sacrum S1..S5 (from the top), remnant discs between them, sacral curvature (deg, per segment going down)
_SAC_SEG_H = [26.0, 22.0, 18.0, 14.0, 11.0]
_SAC_SEG_D = [34.0, 28.0, 22.0, 16.0, 12.0]
_SAC_SEG_W = [45.0, 40.0, 32.0, 24.0, 16.0]
_SAC_SEG_CANAL = [14.0, 11.0, 8.0, 6.0, 4.0]
_SAC_SEG_SAC = [10.0, 5.0, 0.0, 0.0, 0.0]
_SAC_REMNANT = [3.0, 2.5, 2.0, 1.5]
_SAC_CURVE = [3.0, 5.0, 6.0, 7.0]


def vertebra_label(k: int) -> int:
    """MRSpineSeg id of vertebra k (0 = L5 ... 8 = T9); 0 above T9."""
    return 2 + k if k < _N_LABELED_VERT else 0


def disc_label(k: int) -> int:
    """MRSpineSeg id of the disc below vertebra k (0 = L5/S ... 8 = T9/T10); 0 above."""
    return 11 + k if k < _N_LABELED_VERT else 0


# ------------------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------------------
def parse_size(text) -> Tuple[int, int, int]:
    """'ZxYxX' (slices x rows x columns = LR x SI x AP) -> a checked (Z, Y, X) tuple, or a CPS4Error."""
    if isinstance(text, (tuple, list)):
        parts = tuple(int(v) for v in text)
        if len(parts) != 3:
            raise CPS4Error(f"--size needs 3 numbers (slices x rows x columns), got {text!r}. Fix: e.g. --size 7x160x64")
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*", str(text))
        if not m:
            raise CPS4Error(f"--size {text!r} is not of the form ZxYxX (LR slices x SI rows x AP columns). "
                            f"Fix: e.g. --size 7x160x64 (the default) or --size 5x128x48")
        parts = tuple(int(v) for v in m.groups())
    names = ("slices (LR)", "rows (SI)", "columns (AP)")
    for value, lo, hi, what in zip(parts, MIN_SIZE, MAX_SIZE, names):
        if value < lo:
            raise CPS4Error(f"--size {_fmt_size(parts)}: {value} {what} is too few for the spine anatomy "
                            f"(minimum {_fmt_size(MIN_SIZE)}). Fix: e.g. --size 5x128x48 or the default 7x160x64")
        if value > hi:
            raise CPS4Error(f"--size {_fmt_size(parts)}: {value} {what} is more than the phantom supports "
                            f"(maximum {_fmt_size(MAX_SIZE)}). Fix: choose a smaller --size")
    sz, sy, sx = spacing_for(parts)
    if sz <= max(sy, sx):
        raise CPS4Error(f"--size {_fmt_size(parts)}: {parts[0]} slices over the fixed {FOV_MM[0]:g} mm left-right field "
                        f"of view are {sz:.2f} mm thick, not thicker than the {max(sy, sx):.2f} mm in-plane pixels, so "
                        f"nnU-Net would not treat the slices as sagittal. Fix: use fewer slices or more rows/columns "
                        f"(e.g. --size 7x160x64)")
    if int(np.prod(parts)) > MAX_VOXELS:
        raise CPS4Error(f"--size {_fmt_size(parts)} has {int(np.prod(parts))} voxels, more than {MAX_VOXELS}. "
                        f"Fix: choose a smaller --size")
    return parts  # type: ignore[return-value]


def _fmt_size(size: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in size)


def spacing_for(size: Sequence[int]) -> Tuple[float, float, float]:
    """Voxel spacing in mm along (LR, SI, AP) for an array size; the field of view is fixed (`FOV_MM`)."""
    return tuple(float(f) / int(n) for f, n in zip(FOV_MM, size))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------------
# subject sampling: a chain of rigid elements in the mid-sagittal plane (Y superior, X posterior, mm)
# ------------------------------------------------------------------------------------------------------------
def _up(phi: float) -> np.ndarray:
    """Cranial axis of an element tilted anteriorly by phi (radians), as (Y, X)."""
    return np.array([math.cos(phi), -math.sin(phi)])


def _post(phi: float) -> np.ndarray:
    """Posterior axis of an element tilted anteriorly by phi, as (Y, X)."""
    return np.array([math.sin(phi), math.cos(phi)])


def _sample_subject(rng: np.random.Generator) -> dict:
    """Random anatomy: vertebrae, discs and sacral segments with their pose, plus soft-tissue parameters."""
    r = rng.uniform
    scale = r(0.9, 1.12)
    lordosis, kyphosis = r(0.55, 1.35), r(0.4, 1.6)
    sacral_slope = math.radians(r(30.0, 48.0))
    sacral_curve = r(0.7, 1.3)
    degeneration = r(0.4, 1.6)           # subject "age": scales the disc degeneration probabilities
    slip_level = int(rng.integers(0, 2)) if rng.random() < 0.08 else -1
    slip_mm = r(3.0, 7.0)

    vertebrae: List[dict] = []
    discs: List[dict] = []
    sacrum: List[dict] = []

    s1 = dict(kind="sacrum", label=1, origin=np.zeros(2), phi=sacral_slope, h=_SAC_SEG_H[0] * scale * r(0.93, 1.07),
              d=_SAC_SEG_D[0] * scale * r(0.95, 1.05), W=_SAC_SEG_W[0] * scale, canal=_SAC_SEG_CANAL[0] * scale,
              sac_d=_SAC_SEG_SAC[0] * scale, sac_hw=7.0, ped_z=12.0)
    sacrum.append(s1)
    # sacral segments going down: the sacrum curves forward (its cranial axis tilts less and less anteriorly)
    for j in range(1, 5):
        prev = sacrum[-1]
        phi = prev["phi"] - math.radians(_SAC_CURVE[j - 1] * sacral_curve + rng.normal(0, 1.5))
        g = _SAC_REMNANT[j - 1] * scale * r(0.8, 1.2)
        phi_mid = 0.5 * (prev["phi"] + phi)
        bot_post = prev["origin"] - _up(prev["phi"]) * prev["h"] / 2
        top_post = bot_post - _up(phi_mid) * g
        h = _SAC_SEG_H[j] * scale * r(0.9, 1.1)
        seg = dict(kind="sacrum", label=1, origin=top_post - _up(phi) * h / 2, phi=phi, h=h,
                   d=_SAC_SEG_D[j] * scale * r(0.92, 1.08), W=_SAC_SEG_W[j] * scale,
                   canal=_SAC_SEG_CANAL[j] * scale, sac_d=_SAC_SEG_SAC[j] * scale, sac_hw=6.0, ped_z=12.0)
        sacrum.append(seg)
        discs.append(dict(lower=seg, upper=prev, origin=top_post + _up(phi_mid) * g / 2, phi=phi_mid, g=g,
                          label=1, remnant=True, degenerated=False))

    prev = s1
    for k in range(len(VERTEBRAE)):
        lumbar = k <= 4
        delta = math.radians(_SEG_ANGLE[k] * (lordosis if lumbar else kyphosis) + rng.normal(0, 1.5))
        phi = prev["phi"] - delta
        degenerated = rng.random() < min(0.9, _DISC_DEGEN_P[k] * degeneration)
        g = _DISC_H[k] * scale * r(0.85, 1.15) * (r(0.6, 0.85) if degenerated else 1.0)
        h = _BODY_H[k] * scale * r(0.93, 1.07)
        d = _BODY_D[k] * scale * r(0.95, 1.05)
        d_min = min(d, prev["d"])
        g_post = max(g - 0.5 * d_min * math.tan(delta), 0.35 * g)
        phi_mid = 0.5 * (prev["phi"] + phi)
        top_post = prev["origin"] + _up(prev["phi"]) * prev["h"] / 2
        bot_post = top_post + _up(phi_mid) * g_post
        origin = bot_post + _up(phi) * h / 2
        if k == slip_level:
            origin = origin - _post(phi) * slip_mm
        vert = dict(kind="vertebra", index=k, label=vertebra_label(k), origin=origin, phi=phi, h=h, d=d,
                    W=_BODY_W[k] * scale * r(0.95, 1.05), canal=_CANAL_D[k] * scale * r(0.92, 1.08),
                    sac_d=_SAC_D[k] * scale * r(0.9, 1.1), sac_hw=_SAC_HW[k] * r(0.9, 1.1),
                    ped_z=_PED_Z[k] * r(0.95, 1.05), sp_angle=math.radians(_SP_ANGLE[k] + rng.normal(0, 3)),
                    sp_len=_SP_LEN[k] * scale * r(0.85, 1.15), marrow_offset=rng.normal(0, 0.035),
                    haemangioma=(rng.random() < 0.12), haem_pos=(r(-0.3, 0.3), r(0.25, 0.75)))
        vertebrae.append(vert)
        discs.append(dict(lower=prev, upper=vert, origin=top_post + _up(phi_mid) * g_post / 2, phi=phi_mid, g=g,
                          label=disc_label(k), remnant=False, degenerated=degenerated,
                          bulge=r(1.5, 4.0) if degenerated else r(0.0, 1.2),
                          nucleus=r(0.25, 0.45) if degenerated else r(0.78, 0.95),
                          cleft=rng.random() < 0.5, index=k))
        prev = vert

    elements = sacrum + vertebrae
    # straighten: the L5 -> T12 axis becomes vertical, then a random in-plane rotation
    axis = _centre(vertebrae[5]) - _centre(vertebrae[0])
    psi = math.atan2(-axis[1], axis[0])
    alpha = -psi + math.radians(r(-7.0, 7.0))
    ca, sa = math.cos(alpha), math.sin(alpha)
    for e in elements + discs:
        y, x = e["origin"]
        e["origin"] = np.array([y * ca + x * sa, x * ca - y * sa])
        e["phi"] = e["phi"] + alpha

    # AP placement: mean posterior wall of L5..T12 at X0; vertical placement from the field of view
    x0 = r(70.0, 84.0)
    shift_x = x0 - np.mean([v["origin"][1] for v in vertebrae[:6]])
    t12, t9 = vertebrae[5], vertebrae[8]
    t9_top = min(_corner(t9, +1, 0.0)[0], _corner(t9, +1, 1.0)[0])
    y_top = r(_centre(t12)[0], t9_top - 1.0)
    s1_bottom = min(_corner(s1, -1, 0.0)[0], _corner(s1, -1, 1.0)[0])
    y_top = min(y_top, s1_bottom - 5.0 + FOV_MM[1])
    for e in elements + discs:
        e["origin"] = e["origin"] + np.array([-y_top, shift_x])     # Y = 0 is now the top edge of the image

    return dict(scale=scale, lordosis=lordosis, kyphosis=kyphosis, sacral_slope=sacral_slope, sacrum=sacrum,
                vertebrae=vertebrae, discs=discs, slip_level=slip_level,
                lr_offset=r(-1.5, 1.5), lr_tilt=math.radians(r(-2.0, 2.0)),
                muscle_depth=r(50.0, 62.0) * scale, fat=r(5.0, 30.0), conus=r(4.3, 5.7),
                aorta_z=r(7.0, 13.0), aorta_r=r(7.0, 10.0), aorta_value=r(0.08, 0.55),
                diaphragm=r(-20.0, 25.0), fat_infiltration=r(0.0, 0.35),
                marrow=r(0.40, 0.60), abdomen=r(0.3, 0.48), csf=r(0.95, 1.05), fat_value=r(0.72, 0.88), muscle=r(0.17, 0.27),
                gamma=r(0.75, 1.35), noise=r(0.012, 0.035), coil=r(0.5, 1.4), bias_amp=r(0.05, 0.2),
                si_falloff=r(0.0, 0.35), amplitude=r(600.0, 1400.0))


def _centre(e: dict) -> np.ndarray:
    """Centre of an element's body (the origin sits on the posterior wall)."""
    return e["origin"] - _post(e["phi"]) * e["d"] / 2


def _corner(e: dict, side: int, frac: float) -> np.ndarray:
    """Point of the top (side=+1) or bottom (-1) endplate, frac 0 = posterior ... 1 = anterior."""
    return e["origin"] + side * _up(e["phi"]) * e["h"] / 2 - _post(e["phi"]) * e["d"] * frac


# ------------------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------------------
def _rbox(a, b, ha, hb, r):
    """Signed distance to a rounded rectangle |a| <= ha, |b| <= hb with corner radius r (arrays broadcast)."""
    r = np.minimum(r, np.minimum(ha, hb))
    qa = np.abs(a) - (ha - r)
    qb = np.abs(b) - (hb - r)
    outside = np.sqrt(np.maximum(qa, 0) ** 2 + np.maximum(qb, 0) ** 2)
    return outside + np.minimum(np.maximum(qa, qb), 0) - r


def _ramp(sd, aa):
    """Soft membership from a signed distance (negative inside), linear over one pixel: anti-aliasing."""
    return np.clip(0.5 - sd / aa, 0.0, 1.0)


def _smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return f / max(float(f.std()), 1e-6)


class _Canvas:
    """Image and label volume (sub-slices x rows x columns) with row-windowed alpha painting."""

    def __init__(self, z, y, x, aa, aa_z):
        self.z, self.y, self.x = z, y, x
        self.Z = z[:, None, None]
        self.aa, self.aa_z = aa, aa_z
        self.img = np.zeros((len(z), len(y), len(x)), np.float32)
        self.lab = np.zeros((len(z), len(y), len(x)), np.uint8)

    def rows(self, y_centre: float, radius: float) -> slice:
        # y is the image Y coordinate (mm, 0 at the top edge, decreasing downwards)
        lo = int(np.searchsorted(-self.y, -(y_centre + radius), side="left"))
        hi = int(np.searchsorted(-self.y, -(y_centre - radius), side="right"))
        return slice(max(lo, 0), min(hi, len(self.y)))

    def local(self, e_origin, phi, rows: slice):
        """(v, w): coordinates along an element's cranial and posterior axes, for the given rows."""
        dy = self.y[rows][:, None] - e_origin[0]
        dx = self.x[None, :] - e_origin[1]
        u, p = _up(phi), _post(phi)
        return dy * u[0] + dx * u[1], dy * p[0] + dx * p[1]

    def paint(self, rows: slice, m, value, label: Optional[int] = None):
        if rows.stop <= rows.start:
            return
        m = np.broadcast_to(m, self.img[:, rows].shape)
        img = self.img[:, rows]
        img += m * (value - img)
        if label is not None:
            self.lab[:, rows][m > 0.5] = label


def _z_in(Z, lo, hi, aa_z):
    """Soft membership of |z| in [lo, hi]."""
    az = np.abs(Z)
    return _ramp(np.maximum(lo - az, az - hi), aa_z)


def render_subject(subject: dict, size: Sequence[int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Render a sampled subject: (int16 image, uint8 label), both (LR, SI, AP)."""
    nz, ny, nx = (int(v) for v in size)
    sz, sy, sx = spacing_for(size)
    ns = SUBSLICES
    # sub-slice LR positions (mm, + = patient right), image Y (0 at the top, negative downwards), X posterior
    centres = (np.arange(nz) - (nz - 1) / 2) * sz + subject["lr_offset"]
    z = (centres[:, None] + ((np.arange(ns) + 0.5) / ns - 0.5)[None, :] * sz).ravel()
    y = -(np.arange(ny) + 0.5) * sy
    x = (np.arange(nx) + 0.5) * sx
    cv = _Canvas(z, y, x, aa=min(sy, sx), aa_z=max(sz / ns, 0.5))
    Z = cv.Z
    shape3 = cv.img.shape
    sig = lambda mm_z, mm_y, mm_x: (mm_z / (sz / ns), mm_y / sy, mm_x / sx)
    f_marrow = _smooth_noise(rng, shape3, sig(2.0, 2.0, 2.0))
    f_spots = _smooth_noise(rng, shape3, sig(3.0, 3.0, 3.0))
    f_muscle = _smooth_noise(rng, shape3, sig(3.0, 5.0, 2.0))
    f_bowel = _smooth_noise(rng, shape3, sig(6.0, 8.0, 8.0))
    f_gas = _smooth_noise(rng, shape3, sig(4.0, 4.0, 4.0))
    f_fat = _smooth_noise(rng, shape3, sig(3.0, 3.0, 3.0))

    vertebrae, sacrum, discs = subject["vertebrae"], subject["sacrum"], subject["discs"]
    chain = list(reversed(sacrum)) + vertebrae                      # bottom (S5) to top (T8)

    # ---- centre line along the posterior walls, for the canal (nearest-point mapping) ----------------------
    closed = dict(chain[0], canal=0.0, sac_d=0.0)
    pts = [chain[0]["origin"] - np.array([150.0, 0.0]), chain[0]["origin"] - np.array([40.0, 0.0])]
    props = [closed, closed]
    for e in chain:
        pts.append(e["origin"])
        props.append(e)
    top = chain[-1]
    pts += [top["origin"] + _up(top["phi"]) * 60.0, top["origin"] + _up(top["phi"]) * 250.0]
    props += [top, top]
    pts = np.array(pts)
    seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg_len)])
    dense_s = np.arange(0.0, arc[-1], 1.0)
    line = np.stack([np.interp(dense_s, arc, pts[:, 0]), np.interp(dense_s, arc, pts[:, 1])], 1)
    line = ndimage.gaussian_filter1d(line, 6.0, axis=0, mode="nearest")
    tang = np.gradient(line, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    normal = np.stack([-tang[:, 1], tang[:, 0]], 1)                # posterior normal
    prop = lambda key: ndimage.gaussian_filter1d(
        np.interp(dense_s, arc, [float(e[key]) for e in props]), 4.0, mode="nearest")
    canal_d, sac_d, sac_hw, ped_z, body_d = (prop(k) for k in ("canal", "sac_d", "sac_hw", "ped_z", "d"))
    YY, XX = np.meshgrid(y, x, indexing="ij")
    pix = np.stack([YY.ravel(), XX.ravel()], 1)
    tree = cKDTree(line)
    _, idx = tree.query(pix)
    idx = idx.reshape(ny, nx)
    w_line = (YY - line[idx, 0]) * normal[idx, 0] + (XX - line[idx, 1]) * normal[idx, 1]
    s_line = dense_s[idx]
    s_of = lambda e: float(arc[2 + chain.index(e)])
    s_conus = s_of(vertebrae[int(subject["conus"])]) + (subject["conus"] % 1 - 0.5) * vertebrae[4]["h"]

    # ---- soft tissue: air, skin, subcutaneous fat, paraspinal muscle, abdomen / thorax ---------------------
    order = np.argsort(line[:, 0])
    x_post = np.interp(y, line[order, 0], line[order, 1])         # posterior wall line per row
    y_s3 = sacrum[2]["origin"][0]
    x_ref = np.where(y < y_s3, np.interp(y_s3, line[order, 0], line[order, 1]), x_post)
    x_ref = ndimage.gaussian_filter1d(x_ref, 25.0 / sy, mode="nearest")
    y_l1 = vertebrae[4]["origin"][0]
    y_s2 = sacrum[1]["origin"][0]
    muscle = (subject["muscle_depth"] - 12.0 * np.clip((y - y_l1) / 80.0, 0, 1)
              + 15.0 * np.clip((y_s2 - y) / 60.0, 0, 1))
    skin = x_ref + muscle + subject["fat"]
    fat_in = skin - subject["fat"] * (1.0 + 0.25 * np.clip(1 - np.abs(y - y_l1) / 150.0, 0, 1))
    X2 = x[None, :]
    full = slice(0, ny)
    cv.paint(full, _ramp(X2 - skin[:, None], cv.aa)[None], 0.45)
    fat_tex = subject["fat_value"] + 0.03 * f_fat
    cv.paint(full, _ramp(X2 - (skin[:, None] - 1.5), cv.aa)[None], fat_tex)
    mus_tex = (subject["muscle"] + 0.025 * f_muscle
               + subject["fat_infiltration"] / (1 + np.exp(-(f_muscle - 1.6) / 0.25)))
    cv.paint(full, _ramp(X2 - fat_in[:, None], cv.aa)[None], mus_tex)
    # anterior: bowel (fluid bright, gas dark) in mesenteric fat below the diaphragm, dimmer chest above it
    bowel = (subject["abdomen"] + 0.25 / (1 + np.exp(-(f_bowel - 0.5) / 0.3))
             - 0.35 / (1 + np.exp(-(f_gas - 2.0) / 0.2)) + 0.05 * f_fat)
    chest = 0.30 + 0.06 * f_bowel - 0.22 * _z_in(Z, 7.0, 99.0, 3.0)
    y_diaph = vertebrae[5]["origin"][0] + subject["diaphragm"] + 0.35 * (x_post[:, None] - X2)
    thor = 1.0 / (1.0 + np.exp(-(y[:, None] - y_diaph) / 6.0))
    anterior = bowel * (1 - thor[None]) + chest * thor[None]
    cv.paint(full, _ramp(X2 - (x_post[:, None] - 2.0), cv.aa)[None], anterior)

    # ---- canal: epidural fat, ligamentum flavum, dura/CSF, cord, aorta --------------------------------------
    W = w_line[None]
    cd, sd_, shw, pz = (a[idx][None] for a in (canal_d, sac_d, sac_hw, ped_z))
    canal_zone = np.minimum(_ramp(np.maximum(-0.5 - W, W - cd), cv.aa), _z_in(Z, -1.0, pz + 9.0, cv.aa_z))
    cv.paint(full, canal_zone, 0.66 - 0.12 * _z_in(Z, pz - 1.0, 99.0, 2.0) + 0.04 * f_fat)
    cv.paint(full, canal_zone * _ramp(np.abs(W - (cd - 1.3)) - 1.3, cv.aa), 0.14)      # ligamentum flavum
    cv.paint(full, _ramp(np.abs(W - 0.2) - 0.9, cv.aa) * _z_in(Z, -1.0, pz, cv.aa_z), 0.12)  # PLL
    has_sac = sd_ > 1.0
    sac_c = 0.8 + sd_ / 2
    rho = np.sqrt(((W - sac_c) / np.maximum(sd_ / 2, 0.5)) ** 2 + (Z / shw) ** 2)
    sac_m = np.where(has_sac, _ramp((rho - 1) * np.minimum(sd_ / 2, shw), cv.aa), 0.0)
    cv.paint(full, sac_m, subject["csf"])
    s3 = s_line[None]
    cord_f = np.sqrt(np.clip((s3 - s_conus) / 25.0, 0, 1))
    cord_a, cord_b = 4.0 * cord_f, 5.0 * cord_f
    rho_c = np.sqrt(((W - sac_c - 0.5) / np.maximum(cord_a, 0.3)) ** 2 + (Z / np.maximum(cord_b, 0.3)) ** 2)
    cord_m = np.where(cord_f > 0.05, _ramp((rho_c - 1) * np.maximum(cord_a, 0.3), cv.aa), 0.0)
    cv.paint(full, cord_m * sac_m, 0.45)
    # cauda equina: faint layered roots in the dorsal sac below the conus
    roots = (s3 < s_conus) * _ramp(np.abs(W - (sac_c + 0.3 * sd_)) - 1.0, cv.aa) * _z_in(Z, 0.0, 4.0, cv.aa_z)
    cv.paint(full, roots * sac_m, 0.7)
    bd = body_d[idx][None]
    s_l4 = s_of(vertebrae[1])
    aorta_w = -(bd + 3.0 + subject["aorta_r"])
    rho_a = np.sqrt((W - aorta_w) ** 2 + (Z - subject["aorta_z"]) ** 2)
    aorta_m = _ramp(rho_a - subject["aorta_r"], cv.aa) * (s3 > s_l4)
    cv.paint(full, aorta_m, subject["aorta_value"])

    # ---- posterior elements (background label) --------------------------------------------------------------
    def bone(rows, sd_in, mz, marrow, cortex=1.6):
        cv.paint(rows, _ramp(sd_in, cv.aa) * mz, 0.07)
        cv.paint(rows, _ramp(sd_in + cortex, cv.aa) * mz, marrow)

    marrow0 = subject["marrow"]
    for v in vertebrae:
        rows = cv.rows(v["origin"][0], 110.0)
        if rows.stop <= rows.start:
            continue
        vv, ww = cv.local(v["origin"], v["phi"], rows)
        h, cd_v, pz_v = v["h"], v["canal"], v["ped_z"]
        tex = marrow0 + v["marrow_offset"] + 0.05 * f_marrow[:, rows]
        # exiting nerve root in the foramen under the pedicle (lateral slices)
        sd_r = np.sqrt((vv + 0.12 * h) ** 2 + ((ww - 0.45 * cd_v) * 0.8) ** 2) - 2.8
        cv.paint(rows, _ramp(sd_r, cv.aa)[None] * _z_in(Z, pz_v - 1.0, pz_v + 9.0, cv.aa_z), 0.3)
        # pedicles (upper half of the body, lateral slices)
        sd_p = _rbox(vv - 0.2 * h, ww - cd_v / 2, 0.26 * h, cd_v / 2 + 1.5, 2.0)
        bone(rows, sd_p[None], _z_in(Z, pz_v, pz_v + 8.0, cv.aa_z), tex)
        # laminae
        sd_l = _rbox(vv + 0.25 * h, ww - (cd_v + 3.5), 0.42 * h, 3.5, 2.0)
        bone(rows, sd_l[None], _z_in(Z, -1.0, pz_v + 7.0, cv.aa_z), tex)
        # spinous process, sloping down and back
        a = v["sp_angle"]
        v0, w0 = (-0.2 if v["index"] <= 4 else -0.05) * h, cd_v + 4.0
        along = -(vv - v0) * math.sin(a) + (ww - w0) * math.cos(a)
        perp = (vv - v0) * math.cos(a) + (ww - w0) * math.sin(a)
        hs = (0.27 if v["index"] <= 4 else 0.2) * h
        sd_s = _rbox(along - v["sp_len"] / 2, perp, v["sp_len"] / 2, hs, hs * 0.7)
        bone(rows, sd_s[None], _z_in(Z, -1.0, 3.5, cv.aa_z), tex)
    for j, seg in enumerate(sacrum[:4]):
        rows = cv.rows(seg["origin"][0], 60.0)
        if rows.stop <= rows.start:
            continue
        vv, ww = cv.local(seg["origin"], seg["phi"], rows)
        tex = marrow0 + 0.08 + 0.05 * f_marrow[:, rows]
        sd_plate = _rbox(vv, ww - (seg["canal"] + 4.0), seg["h"] / 2 + 1.5, 4.0, 2.0)
        bone(rows, sd_plate[None], _z_in(Z, -1.0, 16.0, cv.aa_z), tex)
        sd_crest = _rbox(vv + 0.1 * seg["h"], ww - (seg["canal"] + 9.0), 0.28 * seg["h"], 5.0, 3.0)
        bone(rows, sd_crest[None], _z_in(Z, -1.0, 3.0, cv.aa_z), tex)

    # ---- discs (labeled), then bodies (labeled) --------------------------------------------------------------
    def depth_at(e):
        return e["d"] * np.sqrt(np.clip(1.0 - (Z / e["W"]) ** 2, 0.0, 1.0))

    for dsc in discs:
        lo, up = dsc["lower"], dsc["upper"]
        rows = cv.rows(dsc["origin"][0], 45.0)
        if dsc["remnant"] or rows.stop <= rows.start:        # the sacrum draws its own rudimentary discs
            continue
        vl, _ = cv.local(lo["origin"], lo["phi"], rows)
        vu, _ = cv.local(up["origin"], up["phi"], rows)
        _, wm = cv.local(dsc["origin"], dsc["phi"], rows)
        s_low = (vl - lo["h"] / 2)[None]
        s_up = (-up["h"] / 2 - vu)[None]
        depth = np.minimum(depth_at(lo), depth_at(up))
        wm3 = wm[None]
        bulge = dsc["bulge"]
        gap = np.maximum(s_low + s_up, 0.5)
        tn = (s_low - s_up) / gap
        front = -depth - 1.0 - 1.0 * (1 - tn ** 2)
        back = bulge * np.clip(1 - tn ** 2, 0, 1)
        sd = np.maximum(np.maximum(-s_low, -s_up), np.maximum(wm3 - back, front - wm3))
        sd = np.where(depth > 1.0, sd, 10.0)
        annulus = (0.3 if not dsc["degenerated"] else 0.22) + 0.04 * f_marrow[:, rows]
        cv.paint(rows, _ramp(sd, cv.aa), annulus, label=dsc["label"])
        # nucleus: central-posterior ellipse; optional dark intranuclear cleft
        wc, aw = -0.5 * depth, 0.36 * depth
        W_lr = 0.75 * min(lo["W"], up["W"])
        rho_n = np.sqrt(((wm3 - wc) / np.maximum(aw, 0.5)) ** 2 + (tn / 0.75) ** 2 + (Z / W_lr) ** 2)
        sd_n = np.where(depth > 2.0, (rho_n - 1) * np.minimum(aw, 0.375 * gap), 10.0)
        cv.paint(rows, _ramp(sd_n, cv.aa), dsc["nucleus"] + 0.04 * f_spots[:, rows])
        if dsc["cleft"] and not dsc["degenerated"]:
            cleft = _ramp(np.abs(tn) * gap / 2 - 0.6, cv.aa) * _ramp(sd_n + 1.5, cv.aa)
            cv.paint(rows, cleft, 0.45 * dsc["nucleus"])

    # sacrum: one fused, wedge-shaped bone between the posterior-wall line and an anterior surface that tapers
    # smoothly from S1 to S5; the rudimentary discs stay as faint lines
    s1, s5 = sacrum[0], sacrum[-1]
    rows = cv.rows(0.5 * (s1["origin"][0] + s5["origin"][0]), 0.5 * abs(s1["origin"][0] - s5["origin"][0]) + 45.0)
    if rows.stop > rows.start:
        v1, _ = cv.local(s1["origin"], s1["phi"], rows)
        s_rows, w_rows, d_rows = s_line[rows][None], w_line[rows][None], body_d[idx[rows]][None]
        d_z = d_rows * np.sqrt(np.clip(1.0 - (Z / s1["W"]) ** 2, 0.0, 1.0))
        s_tip = s_of(s5) - s5["h"] / 2
        outer = np.maximum(np.maximum(w_rows, -d_z - w_rows), np.maximum((v1 - s1["h"] / 2)[None], s_tip - s_rows))
        cv.paint(rows, _ramp(outer, cv.aa), 0.08, label=1)
        cv.paint(rows, _ramp(outer + 1.8, cv.aa), marrow0 + 0.08 + 0.06 * f_marrow[:, rows])
        for dsc in discs[:len(sacrum) - 1]:
            s_rem = float(dense_s[tree.query(dsc["origin"])[1]])
            sd = np.maximum(np.abs(s_rows - s_rem) - 0.4 * dsc["g"], np.maximum(w_rows + 0.3 * d_z, -0.9 * d_z - w_rows))
            cv.paint(rows, _ramp(sd, cv.aa) * 0.55, 0.2 + 0.05 * f_marrow[:, rows])

    for e in vertebrae:
        label = e["label"] if e["index"] < _N_LABELED_VERT else 0
        rows = cv.rows(e["origin"][0], 50.0)
        if rows.stop <= rows.start:
            continue
        vv, ww = cv.local(e["origin"], e["phi"], rows)
        depth = depth_at(e)
        sd = _rbox(vv[None], ww[None] + depth / 2, e["h"] / 2, np.maximum(depth / 2, 1e-3), 3.0)
        sd = np.where(depth > 1.0, sd, 10.0)
        tex = marrow0 + e["marrow_offset"] + 0.07 * f_marrow[:, rows]
        tex = tex + 0.12 / (1 + np.exp(-(f_spots[:, rows] - 1.8) / 0.2))          # focal fatty marrow
        cv.paint(rows, _ramp(sd, cv.aa), 0.08, label=label)
        cv.paint(rows, _ramp(sd + 1.6, cv.aa), tex)
        # basivertebral vein: bright notch in the middle of the posterior wall (central slices)
        sd_b = _rbox(vv[None], ww[None] + 4.0, 1.2, 4.0, 1.0)
        cv.paint(rows, _ramp(sd_b, cv.aa) * _z_in(Z, -1.0, 4.0, cv.aa_z), 0.75)
        if e["haemangioma"]:                                  # bright round focus, any level
            fv, fw = e["haem_pos"]
            sd_h = (np.sqrt((vv - fv * e["h"]) ** 2 + (ww + fw * e["d"]) ** 2) - 0.18 * e["h"])[None]
            cv.paint(rows, _ramp(np.maximum(sd_h, sd + 2.5), cv.aa) * _z_in(Z, -1.0, 10.0, 2.0), 0.85)

    # ---- slice profile, contrast, bias field, noise ---------------------------------------------------------
    img = cv.img.reshape(nz, ns, ny, nx).mean(1)
    img = ndimage.gaussian_filter(img, (0, 0.45, 0.45))                  # in-plane point spread
    lab = np.ascontiguousarray(cv.lab.reshape(nz, ns, ny, nx)[:, ns // 2])
    img = np.clip(img, 0, None) ** subject["gamma"]
    xs_skin = float(np.median(skin))
    coil = np.exp(-subject["coil"] * np.clip(xs_skin - x, 0, None) / FOV_MM[2])[None, None, :]
    si = 1.0 - subject["si_falloff"] * (((y - y.mean()) / (FOV_MM[1] / 2)) ** 2)[None, :, None]
    f_bias = _smooth_noise(rng, (nz, ny, nx), (60.0 / sz, 60.0 / sy, 60.0 / sx))
    bias = coil * si * np.exp(subject["bias_amp"] * f_bias)
    img = img * (bias / bias.mean())
    n1, n2 = rng.standard_normal((2, nz, ny, nx)).astype(np.float32) * subject["noise"]
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    img = np.clip(np.round(img * subject["amplitude"]), 0, 32767).astype(np.int16)
    return img, lab


def _visible_top(label: np.ndarray) -> Optional[str]:
    names = {v: k for k, v in MRSPINESEG_LABELS.items()}
    present = [int(v) for v in np.unique(label) if 1 <= v <= 10]
    return names[max(present)] if present else None


def make_case(seed: int, index: int, size: Sequence[int] = DEFAULT_SIZE) -> Tuple[np.ndarray, np.ndarray, dict]:
    """One phantom subject: (int16 image, uint8 label, info), arrays (LR, SI, AP), from rng([seed, index])."""
    size = parse_size(size)
    _check_seed(seed)
    rng = np.random.default_rng([int(seed), int(index)])
    subject = _sample_subject(rng)
    image, label = render_subject(subject, size, rng)
    info = {"top_level": _visible_top(label), "scale": round(subject["scale"], 3),
            "lordosis": round(subject["lordosis"], 3), "sacral_slope_deg": round(math.degrees(subject["sacrum"][0]["phi"]), 1),
            "degenerated_discs": [_disc_name(d["index"]) for d in subject["discs"]
                                  if not d["remnant"] and d["degenerated"] and _disc_name(d["index"])]}
    return image, label, info


def _check_seed(seed) -> None:
    if int(seed) < 0:
        raise CPS4Error(f"--seed {seed} is negative. Fix: use a seed of 0 or more")


def _disc_name(k: int) -> Optional[str]:
    lab = disc_label(k)
    return next((n for n, v in MRSPINESEG_LABELS.items() if v == lab), None) if lab else None


def _direction() -> Tuple[float, ...]:
    # columns of the direction matrix (LPS): index x (AP column) -> posterior, y (row) -> inferior,
    # z (slice) -> patient right; a proper rotation (determinant +1)
    return (0.0, 0.0, -1.0,
            1.0, 0.0, 0.0,
            0.0, -1.0, 0.0)


def write_case(array: np.ndarray, spacing: Sequence[float], path: str) -> None:
    """Write an (LR, SI, AP) array as NIfTI with the phantom's spacing and sagittal orientation."""
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetDirection(_direction())
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, path, True)


# ------------------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------------------
def generate_phantom_dataset(dataset_id: int, n_cases: int = DEFAULT_N,
                             labeled_fraction: float = DEFAULT_LABELED_FRACTION, n_test: int = DEFAULT_TEST,
                             seed: int = DEFAULT_SEED, size=DEFAULT_SIZE, name: str = DEFAULT_NAME,
                             overwrite: bool = False, raw_root: Optional[str] = None, verbose: bool = False) -> str:
    """Write a phantom dataset under `raw_root` (default $nnUNet_raw) and return its folder."""
    size = parse_size(size)
    n_cases, n_test = int(n_cases), int(n_test)
    if n_test < 0:
        raise CPS4Error(f"--test {n_test} is negative. Fix: use --test 0 or more")
    if n_cases < n_test + 1:
        raise CPS4Error(f"-n {n_cases} is too small for --test {n_test}: no training case would be left. "
                        f"Fix: use -n {n_test + 1} or more (better {n_test + 2}+ so there is an unlabeled case), "
                        f"or lower --test")
    if not 0 < labeled_fraction <= 1:
        raise CPS4Error(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}. Fix: e.g. 0.05 for 5 %")
    _check_seed(seed)
    raw_root = raw_root or require_env_folder("nnUNet_raw")
    width = max(3, len(str(n_cases - 1)))
    case_ids = [f"spine_{i:0{width}d}" for i in range(n_cases)]
    split = make_split(case_ids, labeled_fraction, n_test, seed)
    folder = create_dataset_folder(raw_root, dataset_id, name, overwrite=overwrite)
    os.makedirs(os.path.join(folder, REFERENCE_FOLDER), exist_ok=True)
    spacing = spacing_for(size)
    where = {c: "labeled" for c in split["labeled"]}
    where.update({c: "unlabeled" for c in split["unlabeled"]})
    where.update({c: "test" for c in split["test"]})
    folders = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": (UNLABELED_FOLDER, REFERENCE_FOLDER),
               "test": ("imagesTs", "labelsTs")}
    phantom = {"seed": int(seed), "size": list(size), "spacing": [round(s, 6) for s in spacing],
               "fov_mm": list(FOV_MM), "axes": ["LR", "SI", "AP"], "n_cases": n_cases,
               "labeled_fraction": float(labeled_fraction), "n_test": n_test, "version": PHANTOM_VERSION,
               "reference_label_folder": REFERENCE_FOLDER}
    # dataset.json first: it marks the folder as ours, so --overwrite can replace an interrupted run
    write_dataset_json(folder, dict(MRSPINESEG_LABELS), CHANNEL_NAMES, len(split["labeled"]), FILE_ENDING,
                       GENERATOR, os.path.basename(folder),
                       description="Synthetic sagittal T2 lumbar spine MR phantom (nnunet-cps4), MRSpineSeg labels",
                       license="synthetic data without any patient information (nnunet-cps4 phantom)",
                       extra_cps4={"phantom": phantom, PROMPT_FILE_KEY: "mrspineseg"})
    infos = {}
    t0 = time.time()
    for i, case in enumerate(case_ids):
        image, label, info = make_case(seed, i, size)
        img_dir, lab_dir = folders[where[case]]
        write_case(image, spacing, os.path.join(folder, img_dir, f"{case}_0000{FILE_ENDING}"))
        write_case(label, spacing, os.path.join(folder, lab_dir, f"{case}{FILE_ENDING}"))
        infos[case] = info
        if verbose:
            print(f"{case} ({where[case]}): top level {info['top_level']}")
    write_split(folder, split, generator=GENERATOR, reference_label_folder=REFERENCE_FOLDER,
                cases={c: {"set": where[c], **infos[c]} for c in case_ids})
    if verbose:
        print(f"wrote {n_cases} cases to {folder} in {time.time() - t0:.1f} s "
              f"({len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, {len(split['test'])} test)")
    return folder


# ------------------------------------------------------------------------------------------------------------
# picture
# ------------------------------------------------------------------------------------------------------------
def _label_colors() -> np.ndarray:
    """RGBA per label id: strong colours for the bodies, light ones for the discs, no greys."""
    import matplotlib
    tab20 = matplotlib.colormaps["tab20"].colors
    colors = np.zeros((20, 4))
    strong = [0, 2, 4, 6, 8, 10, 12, 16, 18]
    light = [1, 3, 5, 7, 9, 11, 13, 17, 19]
    for lab in range(1, 10):
        colors[lab, :3] = tab20[strong[(lab - 1) % 9]]
    colors[10, :3] = (1.0, 0.85, 0.1)
    for lab in range(11, 20):
        colors[lab, :3] = tab20[light[(lab - 11 + 4) % 9]]
    colors[1:, 3] = 1.0
    return colors


def save_overview_png(raw_dataset_folder: str, out_png: str, n_cases: int = 4, lateral: bool = True) -> str:
    """Mid-sagittal image, label overlay (and a lateral slice) for the first `n_cases` cases that have labels.

    Looks in labelsTr, labelsUnlabeledReference and labelsTs. Returns `out_png`.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    pairs = []
    for img_dir, lab_dir, set_name in (("imagesTr", "labelsTr", "labeled"),
                                       (UNLABELED_FOLDER, REFERENCE_FOLDER, "unlabeled"),
                                       ("imagesTs", "labelsTs", "test")):
        lab_path = os.path.join(raw_dataset_folder, lab_dir)
        if not os.path.isdir(lab_path):
            continue
        for f in sorted(os.listdir(lab_path)):
            if f.endswith(FILE_ENDING):
                case = f[:-len(FILE_ENDING)]
                img = os.path.join(raw_dataset_folder, img_dir, f"{case}_0000{FILE_ENDING}")
                if os.path.isfile(img):
                    pairs.append((case, set_name, img, os.path.join(lab_path, f)))
    if not pairs:
        raise CPS4Error(f"no image/label pairs found in {raw_dataset_folder}. Fix: point to a dataset folder "
                        f"written by nnUNetv2_cps4_make_phantom")
    pairs = sorted(pairs)[:n_cases]
    names = {v: k for k, v in MRSPINESEG_LABELS.items()}
    colors = _label_colors()
    per_case = 3 if lateral else 2
    panel_w = 1.5
    aspect = FOV_MM[1] / FOV_MM[2]
    fig, axes = plt.subplots(1, per_case * len(pairs), figsize=(panel_w * per_case * len(pairs), panel_w * aspect + 0.5),
                             squeeze=False)
    for c, (case, where, img_path, lab_path) in enumerate(pairs):
        img_itk = sitk.ReadImage(img_path)
        img = sitk.GetArrayFromImage(img_itk).astype(np.float32)
        lab = sitk.GetArrayFromImage(sitk.ReadImage(lab_path))
        sp = img_itk.GetSpacing()[::-1]
        mid = img.shape[0] // 2
        vmax = float(np.percentile(img, 99.5))
        extent = (0, img.shape[2] * sp[2], img.shape[1] * sp[1], 0)
        panels = [("image", mid), ("labels", mid)] + ([("lateral", 0)] if lateral else [])
        for p, (kind, sl) in enumerate(panels):
            ax = axes[0, c * per_case + p]
            ax.imshow(img[sl], cmap="gray", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
            if kind == "labels":
                ax.imshow(colors[lab[sl]] * np.array([1, 1, 1, 0.5]), extent=extent, interpolation="nearest")
                for v in np.unique(lab[sl]):
                    if 1 <= v <= 10:
                        rr, cc = np.nonzero(lab[sl] == v)
                        ax.text(extent[1] * 0.02, (rr.mean() + 0.5) * sp[1], names[int(v)], color="yellow",
                                fontsize=6, va="center")
            title = {"image": f"{case} ({where})\nmid-sagittal", "labels": "labels",
                     "lateral": "lateral slice 0"}[kind]
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=1 - 0.42 / height, wspace=0.04)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=130)
    plt.close(fig)
    return out_png


# ------------------------------------------------------------------------------------------------------------
# console script
# ------------------------------------------------------------------------------------------------------------
def _parse_args(argv):
    p = argparse.ArgumentParser(prog="nnUNetv2_cps4_make_phantom",
                                description="Write a synthetic sagittal T2 spine MR dataset (MRSpineSeg labels) in the "
                                            "semi-supervised nnU-Net layout under $nnUNet_raw.")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id (1-999)")
    p.add_argument("-n", "--n-cases", type=int, default=DEFAULT_N, help=f"number of subjects (default {DEFAULT_N})")
    p.add_argument("--labeled-fraction", type=float, default=DEFAULT_LABELED_FRACTION,
                   help=f"fraction of the training cases that get labels (default {DEFAULT_LABELED_FRACTION})")
    p.add_argument("--test", type=int, default=DEFAULT_TEST, help=f"number of test cases (default {DEFAULT_TEST})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for anatomy and split (default 0)")
    p.add_argument("--size", default=_fmt_size(DEFAULT_SIZE),
                   help="voxels LRxSIxAP, e.g. 7x160x64 (default); the field of view is fixed at 28x400x160 mm")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"dataset name (default {DEFAULT_NAME})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing phantom dataset with this id")
    p.add_argument("--png", default=None, help="also write an overview picture to this path")
    return p.parse_args(argv)


def _main(argv=None) -> None:
    args = _parse_args(argv)
    size = parse_size(args.size)
    folder = generate_phantom_dataset(args.dataset_id, args.n_cases, args.labeled_fraction, args.test, args.seed,
                                      size, args.name, args.overwrite, verbose=False)
    with open(os.path.join(folder, "cps4_split.json")) as f:
        split = json.load(f)
    print(f"wrote {folder}: {len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, "
          f"{len(split['test'])} test cases, size {_fmt_size(size)}")
    if args.png:
        print(f"overview: {save_overview_png(folder, args.png)}")


def main(argv=None) -> None:
    """Console script `nnUNetv2_cps4_make_phantom`; bad settings end with a one-line error and exit status 2."""
    run_cli(_main, argv)


if __name__ == "__main__":
    main()
