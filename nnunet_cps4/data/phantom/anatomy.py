"""The phantom's anatomy: per-level size tables, MRSpineSeg label ids, element geometry and the random subject.

A subject is a chain of rigid elements in the mid-sagittal plane (coordinates in mm: Y superior, X posterior):
five sacral segments from S1 down, then the vertebrae L5 ... T8 going up, and a disc between each pair of
neighbours. Each element is a dict whose `origin` lies on the posterior wall in the middle of the body and whose
`phi` is its anterior tilt (radians). `_sample_subject` draws the chain, straightens and rotates it, places it
in the fixed field of view `FOV_MM` (Y = 0 at the top edge of the image) and draws the soft-tissue, contrast
and noise parameters that the renderer uses.
"""
import math
from typing import List, Sequence, Tuple

import numpy as np

#: fixed physical field of view in mm along (LR, SI, AP)
FOV_MM: Tuple[float, float, float] = (28.0, 400.0, 160.0)

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


def spacing_for(size: Sequence[int]) -> Tuple[float, float, float]:
    """Voxel spacing in mm along (LR, SI, AP) for an array size; the field of view is fixed (`FOV_MM`)."""
    return tuple(float(f) / int(n) for f, n in zip(FOV_MM, size))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------------
# element geometry (Y superior, X posterior, mm)
# ------------------------------------------------------------------------------------------------------------
def _up(phi: float) -> np.ndarray:
    """Cranial axis of an element tilted anteriorly by phi (radians), as (Y, X)."""
    return np.array([math.cos(phi), -math.sin(phi)])


def _post(phi: float) -> np.ndarray:
    """Posterior axis of an element tilted anteriorly by phi, as (Y, X)."""
    return np.array([math.sin(phi), math.cos(phi)])


def _centre(e: dict) -> np.ndarray:
    """Centre of an element's body (the origin sits on the posterior wall)."""
    return e["origin"] - _post(e["phi"]) * e["d"] / 2


def _corner(e: dict, side: int, frac: float) -> np.ndarray:
    """Point of the top (side=+1) or bottom (-1) endplate, frac 0 = posterior ... 1 = anterior."""
    return e["origin"] + side * _up(e["phi"]) * e["h"] / 2 - _post(e["phi"]) * e["d"] * frac


def _depth_at(e: dict, Z) -> np.ndarray:
    """AP depth of an element's body at LR position Z (elliptic cross-section of half width W)."""
    return e["d"] * np.sqrt(np.clip(1.0 - (Z / e["W"]) ** 2, 0.0, 1.0))


# ------------------------------------------------------------------------------------------------------------
# the random subject
# ------------------------------------------------------------------------------------------------------------
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
