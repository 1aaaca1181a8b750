"""Naming the vertebra, disc, endplate and rib ids of the TPTBox / VerSe label convention.

TPTBox (core/vert_constants.py) numbers vertebrae C1-C7 = 1-7, T1-T12 = 8-19, T13 = 28, L1-L6 = 20-25, S1 = 26,
S2-S6 = 29-33, coccyx = 27; the disc below vertebra v is 100 + v, its endplate 200 + v, its rib 32 + v. Discs are
named after the two levels they join ("L4/L5", "L5/S"), as in MRSpineSeg, so a dataset converted with these
names can use the shipped MRSpineSeg prompts where the levels overlap.
"""
from typing import Dict, Iterable, List, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_cps4.data.image_io import read_image
from nnunet_cps4.errors import CPS4Error

#: vertebra ids of the TPTBox / VerSe convention (TPTBox core/vert_constants.py, v_idx2name)
VERSE_VERTEBRA_NAMES: Dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)}, 28: "T13",
    **{i + 19: f"L{i}" for i in range(1, 7)},
    26: "S1", **{i + 27: f"S{i}" for i in range(2, 7)}, 27: "Cocc",
}
#: cranio-caudal order of the vertebra ids
VERSE_ORDER: List[int] = [*range(1, 20), 28, *range(20, 26), 26, *range(29, 34), 27]
VERSE_SACRUM_IDS = (26, 29, 30, 31, 32, 33)
VERSE_IVD_OFFSET = 100  # disc below vertebra v
VERSE_ENDPLATE_OFFSET = 200  # endplate of vertebra v
VERSE_RIB_OFFSET = 32  # rib of vertebra v (C6..T13, L1 in TPTBox)
VERSE_RIB_VERTEBRAE = (6, 7, *range(8, 21), 28)

_KIND_ORDER = {"vertebra": 0, "disc": 1, "endplate": 2, "rib": 3}


def _verse_parse(label_id: int) -> Tuple[str, int]:
    """(kind, vertebra id) of a TPTBox/VerSe label id, or a CPS4Error."""
    i = int(label_id)
    if i in VERSE_VERTEBRA_NAMES:
        return "vertebra", i
    if i - VERSE_IVD_OFFSET in VERSE_VERTEBRA_NAMES:
        return "disc", i - VERSE_IVD_OFFSET
    if i - VERSE_ENDPLATE_OFFSET in VERSE_VERTEBRA_NAMES:
        return "endplate", i - VERSE_ENDPLATE_OFFSET
    if i - VERSE_RIB_OFFSET in VERSE_RIB_VERTEBRAE:
        return "rib", i - VERSE_RIB_OFFSET
    raise CPS4Error(f"label id {i} is not a vertebra (1-33), disc (101-133), endplate (201-233) or rib (38-53) id "
                    f"of the TPTBox/VerSe convention. Fix: map or remove it before converting")


def verse_label_names(label_ids: Iterable[int], sacrum: str = "merge", endplates: str = "vertebra",
                      ribs: str = "error") -> Dict[int, str]:
    """Name each TPTBox/VerSe label id: {id: name}; 0 and dropped ids map to "background".

    label_ids: the ids present in the dataset (all cases together, so names agree between cases). Vertebrae are
    "C1".."C7", "T1".."T13", "L1".."L6", "S" (or "S1".."S6" with sacrum="separate"), "Cocc"; the disc below
    vertebra v is "<v>/<next>", where next is the vertebra below (T13 and L6 only when present among label_ids),
    so 105 -> "C5/C6", 119 -> "T12/L1", 124 -> "L5/S" — MRSpineSeg's names where the structures overlap.
    sacrum: "merge" (all sacral segments and the discs between them are "S", as in MRSpineSeg) or "separate".
    endplates: "vertebra" (part of their vertebra: TPTBox's endplate is a part of the vertebral body),
    "separate" ("C5 endplate") or "background". ribs: "error", "separate" ("T5 rib") or "background".
    """
    for option, value, allowed in (("sacrum", sacrum, ("merge", "separate")),
                                   ("endplates", endplates, ("vertebra", "separate", "background")),
                                   ("ribs", ribs, ("error", "separate", "background"))):
        if value not in allowed:
            raise CPS4Error(f"{option}={value!r} is not one of {', '.join(allowed)}")
    ids = sorted({int(i) for i in label_ids} - {0})
    parsed = {i: _verse_parse(i) for i in ids}
    levels = {v for _, v in parsed.values()}
    order = [v for v in VERSE_ORDER if v not in (28, 25) or v in levels]  # T13 / L6 only where present

    def vertebra(v: int) -> str:
        return "S" if sacrum == "merge" and v in VERSE_SACRUM_IDS else VERSE_VERTEBRA_NAMES[v]

    names = {0: "background"}
    for i, (kind, v) in parsed.items():
        if kind == "vertebra":
            names[i] = vertebra(v)
        elif kind == "disc":
            position = order.index(v)
            if position + 1 >= len(order):
                raise CPS4Error(f"label id {i} would be a disc below the coccyx, which does not exist. Fix: map or "
                                f"remove it before converting")
            upper, lower = vertebra(v), vertebra(order[position + 1])
            names[i] = upper if upper == lower else f"{upper}/{lower}"  # merged sacrum: fused sacral discs
        elif kind == "endplate":
            names[i] = {"vertebra": vertebra(v), "separate": f"{vertebra(v)} endplate",
                        "background": "background"}[endplates]
        else:
            if ribs == "error":
                raise CPS4Error(f"label id {i} is the rib of {VERSE_VERTEBRA_NAMES[v]}; ribs are not spine levels. "
                                f"Fix: pass ribs='background' to drop them or ribs='separate' to keep them")
            names[i] = f"{VERSE_VERTEBRA_NAMES[v]} rib" if ribs == "separate" else "background"
    return names


def verse_labels(label_ids: Iterable[int], sacrum: str = "merge", endplates: str = "vertebra",
                 ribs: str = "error") -> Tuple[Dict[str, int], Dict[int, int]]:
    """nnU-Net labels dict for the TPTBox/VerSe ids present, and the id mapping to apply to the masks.

    Returns (labels, mapping): labels = {"background": 0, "C5": 1, ..., "C5/C6": k, ...} with consecutive ids,
    vertebrae first, then discs, endplates, ribs, each cranio-caudally; mapping = {source id: new id} for every id
    in label_ids (and 0). Options as in `verse_label_names`.
    """
    ids = {int(i) for i in label_ids} | {0}
    names = verse_label_names(ids, sacrum=sacrum, endplates=endplates, ribs=ribs)
    rank = {v: r for r, v in enumerate(VERSE_ORDER)}
    keys: Dict[str, Tuple[int, int]] = {}
    for i, name in names.items():
        if name == "background":
            continue
        kind, v = _verse_parse(i)
        kind = "vertebra" if kind == "endplate" and endplates == "vertebra" else kind
        keys[name] = min(keys.get(name, (9, 99)), (_KIND_ORDER[kind], rank[v]))
    ordered = sorted(keys, key=lambda n: keys[n])
    labels = {"background": 0, **{n: k + 1 for k, n in enumerate(ordered)}}
    return labels, {i: labels[n] for i, n in names.items()}


def label_ids_in_files(paths: Iterable[str]) -> List[int]:
    """All label values found in the given mask files (each read once), sorted."""
    found = set()
    for p in paths:
        image = read_image(p)  # keep a reference: the array view does not own the pixel buffer
        values = np.unique(sitk.GetArrayViewFromImage(image))
        for v in values:
            if not float(v).is_integer():
                raise CPS4Error(f"mask {p} holds the non-integer value {float(v):g}. Fix: correct the mask")
        found.update(int(v) for v in values)
    return sorted(found)


def remap_label_file(src: str, dst: str, mapping: Dict[int, int]) -> None:
    """Write `src`'s mask to `dst` with every value v replaced by mapping[v]; the geometry is kept exactly.

    A value missing from `mapping` is a CPS4Error naming the file. `src` is only read.
    """
    image = read_image(src)
    array = sitk.GetArrayFromImage(image)
    values, inverse = np.unique(array, return_inverse=True)
    unknown = [v for v in values if v not in mapping]
    if unknown:
        raise CPS4Error(f"mask {src} holds value(s) {', '.join(str(int(v)) for v in unknown[:5])} that the label "
                        f"mapping does not cover. Fix: build the mapping from all cases (label_ids_in_files)")
    new_values = np.array([mapping[int(v)] for v in values])
    dtype = np.uint8 if new_values.max(initial=0) < 256 else np.uint16
    out = sitk.GetImageFromArray(new_values[inverse].reshape(array.shape).astype(dtype))
    out.CopyInformation(image)
    sitk.WriteImage(out, dst, useCompression=True)
