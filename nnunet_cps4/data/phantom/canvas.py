"""Drawing primitives of the phantom renderer: signed distances, anti-aliased memberships, smooth noise, the
canvas that tissues are painted on, and the texture fields.

Shapes are signed distances in mm (negative inside); `_ramp` turns one into a membership that is linear over
one pixel, and `_Canvas.paint` blends a value into the image with that membership as alpha (later shapes cover
earlier ones) and sets the label where the membership is over one half. The canvas holds `SUBSLICES`
sub-slices per output slice; the renderer averages them into the thick sagittal slices.
"""
from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage

from nnunet_cps4.data.phantom.anatomy import _post, _up, spacing_for

#: sub-slices rendered per sagittal slice and averaged (through-plane partial volume of the thick slices)
SUBSLICES = 3


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
    """Gaussian-smoothed white noise (sigma in voxels per axis), scaled to unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return f / max(float(f.std()), 1e-6)


def _z_in(Z, lo, hi, aa_z):
    """Soft membership of |z| in [lo, hi]."""
    az = np.abs(Z)
    return _ramp(np.maximum(lo - az, az - hi), aa_z)


class _Canvas:
    """Image and label volume (sub-slices x rows x columns) with row-windowed alpha painting."""

    def __init__(self, z, y, x, spacing, aa, aa_z):
        self.z, self.y, self.x = z, y, x
        self.Z = z[:, None, None]
        self.spacing = spacing              # of the output image (LR, SI, AP), mm
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
        """Blend `value` into the given rows with membership `m` as alpha; `label` where `m` > 0.5."""
        if rows.stop <= rows.start:
            return
        m = np.broadcast_to(m, self.img[:, rows].shape)
        img = self.img[:, rows]
        img += m * (value - img)
        if label is not None:
            self.lab[:, rows][m > 0.5] = label


class _Textures(NamedTuple):
    """Smooth unit-variance noise fields on the canvas, one per tissue texture."""
    marrow: np.ndarray
    spots: np.ndarray
    muscle: np.ndarray
    bowel: np.ndarray
    gas: np.ndarray
    fat: np.ndarray


def _make_canvas(subject: dict, size: Sequence[int]) -> _Canvas:
    """Empty canvas: sub-slice LR positions (mm, + = patient right), image Y (0 at the top, negative
    downwards) and X (posterior) of the pixel centres."""
    nz, ny, nx = (int(v) for v in size)
    sz, sy, sx = spacing_for(size)
    ns = SUBSLICES
    centres = (np.arange(nz) - (nz - 1) / 2) * sz + subject["lr_offset"]
    z = (centres[:, None] + ((np.arange(ns) + 0.5) / ns - 0.5)[None, :] * sz).ravel()
    y = -(np.arange(ny) + 0.5) * sy
    x = (np.arange(nx) + 0.5) * sx
    return _Canvas(z, y, x, (sz, sy, sx), aa=min(sy, sx), aa_z=max(sz / ns, 0.5))


def _textures(cv: _Canvas, rng: np.random.Generator) -> _Textures:
    """The six texture fields, drawn from `rng` in a fixed order (correlation lengths in mm)."""
    sz, sy, sx = cv.spacing
    ns = SUBSLICES
    shape3 = cv.img.shape
    sig = lambda mm_z, mm_y, mm_x: (mm_z / (sz / ns), mm_y / sy, mm_x / sx)
    f_marrow = _smooth_noise(rng, shape3, sig(2.0, 2.0, 2.0))
    f_spots = _smooth_noise(rng, shape3, sig(3.0, 3.0, 3.0))
    f_muscle = _smooth_noise(rng, shape3, sig(3.0, 5.0, 2.0))
    f_bowel = _smooth_noise(rng, shape3, sig(6.0, 8.0, 8.0))
    f_gas = _smooth_noise(rng, shape3, sig(4.0, 4.0, 4.0))
    f_fat = _smooth_noise(rng, shape3, sig(3.0, 3.0, 3.0))
    return _Textures(f_marrow, f_spots, f_muscle, f_bowel, f_gas, f_fat)
