"""Rendering a sampled phantom subject into an (LR, SI, AP) image and label volume.

Each tissue is a soft shape (a signed distance turned into a one-pixel anti-aliased membership) painted over
what is already there, in a fixed order: soft tissue, canal contents, posterior elements, discs, sacrum,
vertebral bodies. Shapes are drawn in each element's own frame (cranial and posterior axes), canal structures
along a smoothed line through the posterior walls. Every sagittal slice is rendered as `SUBSLICES` sub-slices
that are averaged (through-plane partial volume); the label is the middle sub-slice. Last come the in-plane
point spread, the contrast (gamma), a smooth multiplicative bias field and Rician noise.

The random generator is consumed in a fixed order (six texture fields first, then the bias field and the
noise), so a subject and a size always give the same arrays.
"""
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_cps4.data.phantom.anatomy import _N_LABELED_VERT, FOV_MM, _depth_at, _up
from nnunet_cps4.data.phantom.canvas import (SUBSLICES, _Canvas, _make_canvas, _rbox, _ramp, _smooth_noise,
                                             _textures, _Textures, _z_in)


# ------------------------------------------------------------------------------------------------------------
# centre line
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _CentreLine:
    """Smoothed line along the posterior walls (bottom to top) and each pixel's place relative to it.

    `line` holds points 1 mm of arc length apart (`dense_s`); `idx` is every pixel's nearest line point,
    `s_line` its arc length and `w_line` its signed distance along the posterior normal. The per-point element
    properties (canal and sac depth, sac half width, pedicle |z|, body depth) are smoothed along the line.
    """
    chain: list
    arc: np.ndarray
    dense_s: np.ndarray
    line: np.ndarray
    tree: cKDTree
    idx: np.ndarray
    w_line: np.ndarray
    s_line: np.ndarray
    canal_d: np.ndarray
    sac_d: np.ndarray
    sac_hw: np.ndarray
    ped_z: np.ndarray
    body_d: np.ndarray

    def s_of(self, e: dict) -> float:
        """Arc length of an element's origin."""
        return float(self.arc[2 + self.chain.index(e)])


def _centre_line(cv: _Canvas, subject: dict) -> _CentreLine:
    """The canal's centre line: closed below the sacrum, extended straight above the top vertebra."""
    ny, nx = len(cv.y), len(cv.x)
    chain = list(reversed(subject["sacrum"])) + subject["vertebrae"]       # bottom (S5) to top (T8)
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
    YY, XX = np.meshgrid(cv.y, cv.x, indexing="ij")
    pix = np.stack([YY.ravel(), XX.ravel()], 1)
    tree = cKDTree(line)
    _, idx = tree.query(pix)
    idx = idx.reshape(ny, nx)
    w_line = (YY - line[idx, 0]) * normal[idx, 0] + (XX - line[idx, 1]) * normal[idx, 1]
    return _CentreLine(chain, arc, dense_s, line, tree, idx, w_line, dense_s[idx],
                       canal_d, sac_d, sac_hw, ped_z, body_d)


# ------------------------------------------------------------------------------------------------------------
# tissues, in painting order
# ------------------------------------------------------------------------------------------------------------
def _paint_soft_tissue(cv: _Canvas, subject: dict, cl: _CentreLine, tex: _Textures) -> np.ndarray:
    """Air, skin, subcutaneous fat, paraspinal muscle, abdomen / thorax; returns the skin's X per row."""
    y, x, Z, sy = cv.y, cv.x, cv.Z, cv.spacing[1]
    vertebrae, sacrum, line = subject["vertebrae"], subject["sacrum"], cl.line
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
    full = slice(0, len(y))
    cv.paint(full, _ramp(X2 - skin[:, None], cv.aa)[None], 0.45)
    fat_tex = subject["fat_value"] + 0.03 * tex.fat
    cv.paint(full, _ramp(X2 - (skin[:, None] - 1.5), cv.aa)[None], fat_tex)
    mus_tex = (subject["muscle"] + 0.025 * tex.muscle
               + subject["fat_infiltration"] / (1 + np.exp(-(tex.muscle - 1.6) / 0.25)))
    cv.paint(full, _ramp(X2 - fat_in[:, None], cv.aa)[None], mus_tex)
    # anterior: bowel (fluid bright, gas dark) in mesenteric fat below the diaphragm, dimmer chest above it
    bowel = (subject["abdomen"] + 0.25 / (1 + np.exp(-(tex.bowel - 0.5) / 0.3))
             - 0.35 / (1 + np.exp(-(tex.gas - 2.0) / 0.2)) + 0.05 * tex.fat)
    chest = 0.30 + 0.06 * tex.bowel - 0.22 * _z_in(Z, 7.0, 99.0, 3.0)
    y_diaph = vertebrae[5]["origin"][0] + subject["diaphragm"] + 0.35 * (x_post[:, None] - X2)
    thor = 1.0 / (1.0 + np.exp(-(y[:, None] - y_diaph) / 6.0))
    anterior = bowel * (1 - thor[None]) + chest * thor[None]
    cv.paint(full, _ramp(X2 - (x_post[:, None] - 2.0), cv.aa)[None], anterior)
    return skin


def _paint_canal(cv: _Canvas, subject: dict, cl: _CentreLine, tex: _Textures) -> None:
    """Epidural fat, ligamentum flavum, PLL, dura/CSF, cord with conus, cauda equina and the aorta."""
    Z, full, vertebrae = cv.Z, slice(0, len(cv.y)), subject["vertebrae"]
    s_conus = cl.s_of(vertebrae[int(subject["conus"])]) + (subject["conus"] % 1 - 0.5) * vertebrae[4]["h"]
    W = cl.w_line[None]
    cd, sd_, shw, pz = (a[cl.idx][None] for a in (cl.canal_d, cl.sac_d, cl.sac_hw, cl.ped_z))
    canal_zone = np.minimum(_ramp(np.maximum(-0.5 - W, W - cd), cv.aa), _z_in(Z, -1.0, pz + 9.0, cv.aa_z))
    cv.paint(full, canal_zone, 0.66 - 0.12 * _z_in(Z, pz - 1.0, 99.0, 2.0) + 0.04 * tex.fat)
    cv.paint(full, canal_zone * _ramp(np.abs(W - (cd - 1.3)) - 1.3, cv.aa), 0.14)      # ligamentum flavum
    cv.paint(full, _ramp(np.abs(W - 0.2) - 0.9, cv.aa) * _z_in(Z, -1.0, pz, cv.aa_z), 0.12)  # PLL
    has_sac = sd_ > 1.0
    sac_c = 0.8 + sd_ / 2
    rho = np.sqrt(((W - sac_c) / np.maximum(sd_ / 2, 0.5)) ** 2 + (Z / shw) ** 2)
    sac_m = np.where(has_sac, _ramp((rho - 1) * np.minimum(sd_ / 2, shw), cv.aa), 0.0)
    cv.paint(full, sac_m, subject["csf"])
    s3 = cl.s_line[None]
    cord_f = np.sqrt(np.clip((s3 - s_conus) / 25.0, 0, 1))
    cord_a, cord_b = 4.0 * cord_f, 5.0 * cord_f
    rho_c = np.sqrt(((W - sac_c - 0.5) / np.maximum(cord_a, 0.3)) ** 2 + (Z / np.maximum(cord_b, 0.3)) ** 2)
    cord_m = np.where(cord_f > 0.05, _ramp((rho_c - 1) * np.maximum(cord_a, 0.3), cv.aa), 0.0)
    cv.paint(full, cord_m * sac_m, 0.45)
    # cauda equina: faint layered roots in the dorsal sac below the conus
    roots = (s3 < s_conus) * _ramp(np.abs(W - (sac_c + 0.3 * sd_)) - 1.0, cv.aa) * _z_in(Z, 0.0, 4.0, cv.aa_z)
    cv.paint(full, roots * sac_m, 0.7)
    bd = cl.body_d[cl.idx][None]
    s_l4 = cl.s_of(vertebrae[1])
    aorta_w = -(bd + 3.0 + subject["aorta_r"])
    rho_a = np.sqrt((W - aorta_w) ** 2 + (Z - subject["aorta_z"]) ** 2)
    aorta_m = _ramp(rho_a - subject["aorta_r"], cv.aa) * (s3 > s_l4)
    cv.paint(full, aorta_m, subject["aorta_value"])


def _bone(cv: _Canvas, rows: slice, sd_in, mz, marrow, cortex=1.6) -> None:
    """Dark cortical shell with marrow inside, where the in-plane shape `sd_in` meets the LR membership `mz`."""
    cv.paint(rows, _ramp(sd_in, cv.aa) * mz, 0.07)
    cv.paint(rows, _ramp(sd_in + cortex, cv.aa) * mz, marrow)


def _paint_posterior_elements(cv: _Canvas, subject: dict, tex: _Textures) -> None:
    """Nerve roots, pedicles, laminae and spinous processes; the sacral plate and median crest (label 0)."""
    Z, marrow0 = cv.Z, subject["marrow"]
    for v in subject["vertebrae"]:
        rows = cv.rows(v["origin"][0], 110.0)
        if rows.stop <= rows.start:
            continue
        vv, ww = cv.local(v["origin"], v["phi"], rows)
        h, cd_v, pz_v = v["h"], v["canal"], v["ped_z"]
        marrow = marrow0 + v["marrow_offset"] + 0.05 * tex.marrow[:, rows]
        # exiting nerve root in the foramen under the pedicle (lateral slices)
        sd_r = np.sqrt((vv + 0.12 * h) ** 2 + ((ww - 0.45 * cd_v) * 0.8) ** 2) - 2.8
        cv.paint(rows, _ramp(sd_r, cv.aa)[None] * _z_in(Z, pz_v - 1.0, pz_v + 9.0, cv.aa_z), 0.3)
        # pedicles (upper half of the body, lateral slices)
        sd_p = _rbox(vv - 0.2 * h, ww - cd_v / 2, 0.26 * h, cd_v / 2 + 1.5, 2.0)
        _bone(cv, rows, sd_p[None], _z_in(Z, pz_v, pz_v + 8.0, cv.aa_z), marrow)
        # laminae
        sd_l = _rbox(vv + 0.25 * h, ww - (cd_v + 3.5), 0.42 * h, 3.5, 2.0)
        _bone(cv, rows, sd_l[None], _z_in(Z, -1.0, pz_v + 7.0, cv.aa_z), marrow)
        # spinous process, sloping down and back
        a = v["sp_angle"]
        v0, w0 = (-0.2 if v["index"] <= 4 else -0.05) * h, cd_v + 4.0
        along = -(vv - v0) * math.sin(a) + (ww - w0) * math.cos(a)
        perp = (vv - v0) * math.cos(a) + (ww - w0) * math.sin(a)
        hs = (0.27 if v["index"] <= 4 else 0.2) * h
        sd_s = _rbox(along - v["sp_len"] / 2, perp, v["sp_len"] / 2, hs, hs * 0.7)
        _bone(cv, rows, sd_s[None], _z_in(Z, -1.0, 3.5, cv.aa_z), marrow)
    for seg in subject["sacrum"][:4]:
        rows = cv.rows(seg["origin"][0], 60.0)
        if rows.stop <= rows.start:
            continue
        vv, ww = cv.local(seg["origin"], seg["phi"], rows)
        marrow = marrow0 + 0.08 + 0.05 * tex.marrow[:, rows]
        sd_plate = _rbox(vv, ww - (seg["canal"] + 4.0), seg["h"] / 2 + 1.5, 4.0, 2.0)
        _bone(cv, rows, sd_plate[None], _z_in(Z, -1.0, 16.0, cv.aa_z), marrow)
        sd_crest = _rbox(vv + 0.1 * seg["h"], ww - (seg["canal"] + 9.0), 0.28 * seg["h"], 5.0, 3.0)
        _bone(cv, rows, sd_crest[None], _z_in(Z, -1.0, 3.0, cv.aa_z), marrow)


def _paint_discs(cv: _Canvas, subject: dict, tex: _Textures) -> None:
    """Labeled discs between the endplates: annulus, bulge, nucleus and an optional intranuclear cleft."""
    Z = cv.Z
    for dsc in subject["discs"]:
        lo, up = dsc["lower"], dsc["upper"]
        rows = cv.rows(dsc["origin"][0], 45.0)
        if dsc["remnant"] or rows.stop <= rows.start:        # the sacrum draws its own rudimentary discs
            continue
        vl, _ = cv.local(lo["origin"], lo["phi"], rows)
        vu, _ = cv.local(up["origin"], up["phi"], rows)
        _, wm = cv.local(dsc["origin"], dsc["phi"], rows)
        s_low = (vl - lo["h"] / 2)[None]
        s_up = (-up["h"] / 2 - vu)[None]
        depth = np.minimum(_depth_at(lo, Z), _depth_at(up, Z))
        wm3 = wm[None]
        bulge = dsc["bulge"]
        gap = np.maximum(s_low + s_up, 0.5)
        tn = (s_low - s_up) / gap
        front = -depth - 1.0 - 1.0 * (1 - tn ** 2)
        back = bulge * np.clip(1 - tn ** 2, 0, 1)
        sd = np.maximum(np.maximum(-s_low, -s_up), np.maximum(wm3 - back, front - wm3))
        sd = np.where(depth > 1.0, sd, 10.0)
        annulus = (0.3 if not dsc["degenerated"] else 0.22) + 0.04 * tex.marrow[:, rows]
        cv.paint(rows, _ramp(sd, cv.aa), annulus, label=dsc["label"])
        # nucleus: central-posterior ellipse; optional dark intranuclear cleft
        wc, aw = -0.5 * depth, 0.36 * depth
        W_lr = 0.75 * min(lo["W"], up["W"])
        rho_n = np.sqrt(((wm3 - wc) / np.maximum(aw, 0.5)) ** 2 + (tn / 0.75) ** 2 + (Z / W_lr) ** 2)
        sd_n = np.where(depth > 2.0, (rho_n - 1) * np.minimum(aw, 0.375 * gap), 10.0)
        cv.paint(rows, _ramp(sd_n, cv.aa), dsc["nucleus"] + 0.04 * tex.spots[:, rows])
        if dsc["cleft"] and not dsc["degenerated"]:
            cleft = _ramp(np.abs(tn) * gap / 2 - 0.6, cv.aa) * _ramp(sd_n + 1.5, cv.aa)
            cv.paint(rows, cleft, 0.45 * dsc["nucleus"])


def _paint_sacrum(cv: _Canvas, subject: dict, cl: _CentreLine, tex: _Textures) -> None:
    """One fused, wedge-shaped bone (label 1) between the posterior-wall line and an anterior surface that
    tapers smoothly from S1 to S5; the rudimentary discs stay as faint lines."""
    Z, sacrum = cv.Z, subject["sacrum"]
    s1, s5 = sacrum[0], sacrum[-1]
    rows = cv.rows(0.5 * (s1["origin"][0] + s5["origin"][0]), 0.5 * abs(s1["origin"][0] - s5["origin"][0]) + 45.0)
    if rows.stop <= rows.start:
        return
    v1, _ = cv.local(s1["origin"], s1["phi"], rows)
    s_rows, w_rows, d_rows = cl.s_line[rows][None], cl.w_line[rows][None], cl.body_d[cl.idx[rows]][None]
    d_z = d_rows * np.sqrt(np.clip(1.0 - (Z / s1["W"]) ** 2, 0.0, 1.0))
    s_tip = cl.s_of(s5) - s5["h"] / 2
    outer = np.maximum(np.maximum(w_rows, -d_z - w_rows), np.maximum((v1 - s1["h"] / 2)[None], s_tip - s_rows))
    cv.paint(rows, _ramp(outer, cv.aa), 0.08, label=1)
    cv.paint(rows, _ramp(outer + 1.8, cv.aa), subject["marrow"] + 0.08 + 0.06 * tex.marrow[:, rows])
    for dsc in subject["discs"][:len(sacrum) - 1]:
        s_rem = float(cl.dense_s[cl.tree.query(dsc["origin"])[1]])
        sd = np.maximum(np.abs(s_rows - s_rem) - 0.4 * dsc["g"], np.maximum(w_rows + 0.3 * d_z, -0.9 * d_z - w_rows))
        cv.paint(rows, _ramp(sd, cv.aa) * 0.55, 0.2 + 0.05 * tex.marrow[:, rows])


def _paint_vertebral_bodies(cv: _Canvas, subject: dict, tex: _Textures) -> None:
    """Labeled bodies: cortical rim, textured marrow, basivertebral vein, occasional haemangioma."""
    Z = cv.Z
    for e in subject["vertebrae"]:
        label = e["label"] if e["index"] < _N_LABELED_VERT else 0
        rows = cv.rows(e["origin"][0], 50.0)
        if rows.stop <= rows.start:
            continue
        vv, ww = cv.local(e["origin"], e["phi"], rows)
        depth = _depth_at(e, Z)
        sd = _rbox(vv[None], ww[None] + depth / 2, e["h"] / 2, np.maximum(depth / 2, 1e-3), 3.0)
        sd = np.where(depth > 1.0, sd, 10.0)
        marrow = subject["marrow"] + e["marrow_offset"] + 0.07 * tex.marrow[:, rows]
        marrow = marrow + 0.12 / (1 + np.exp(-(tex.spots[:, rows] - 1.8) / 0.2))          # focal fatty marrow
        cv.paint(rows, _ramp(sd, cv.aa), 0.08, label=label)
        cv.paint(rows, _ramp(sd + 1.6, cv.aa), marrow)
        # basivertebral vein: bright notch in the middle of the posterior wall (central slices)
        sd_b = _rbox(vv[None], ww[None] + 4.0, 1.2, 4.0, 1.0)
        cv.paint(rows, _ramp(sd_b, cv.aa) * _z_in(Z, -1.0, 4.0, cv.aa_z), 0.75)
        if e["haemangioma"]:                                  # bright round focus, any level
            fv, fw = e["haem_pos"]
            sd_h = (np.sqrt((vv - fv * e["h"]) ** 2 + (ww + fw * e["d"]) ** 2) - 0.18 * e["h"])[None]
            cv.paint(rows, _ramp(np.maximum(sd_h, sd + 2.5), cv.aa) * _z_in(Z, -1.0, 10.0, 2.0), 0.85)


# ------------------------------------------------------------------------------------------------------------
# acquisition and the whole subject
# ------------------------------------------------------------------------------------------------------------
def _acquire(cv: _Canvas, subject: dict, skin: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Slice profile, in-plane point spread, contrast, coil and bias field, Rician noise: (int16, uint8)."""
    ns, (ny, nx) = SUBSLICES, (len(cv.y), len(cv.x))
    nz = len(cv.z) // ns
    sz, sy, sx = cv.spacing
    y, x = cv.y, cv.x
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


def render_subject(subject: dict, size: Sequence[int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Render a sampled subject: (int16 image, uint8 label), both (LR, SI, AP)."""
    cv = _make_canvas(subject, size)
    tex = _textures(cv, rng)
    cl = _centre_line(cv, subject)
    skin = _paint_soft_tissue(cv, subject, cl, tex)
    _paint_canal(cv, subject, cl, tex)
    _paint_posterior_elements(cv, subject, tex)
    _paint_discs(cv, subject, tex)
    _paint_sacrum(cv, subject, cl, tex)
    _paint_vertebral_bodies(cv, subject, tex)
    return _acquire(cv, subject, skin, rng)
