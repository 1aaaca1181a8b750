"""Reading images and comparing their geometry, shared by the converters.

Every read failure becomes a CPS4Error naming the file; geometry is compared with the same spacing tolerance as
nnU-Net's own check. Files are only read: copies are plain byte copies, or SimpleITK re-writes to .nii.gz.
"""
import shutil
from typing import Optional

import numpy as np
import SimpleITK as sitk

from nnunet_cps4.errors import CPS4Error

# geometry tolerances: spacing as strict as nnU-Net's own check (np.allclose defaults), origin in mm, direction
# cosines unitless; float noise from header round trips stays well below these
_ORIGIN_ATOL = 1e-3
_DIRECTION_ATOL = 1e-4


def one_line(text: str) -> str:
    """The informative line of a (multi-line) library error, e.g. SimpleITK's 'sitk::ERROR: ...' line."""
    lines = [l.strip() for l in str(text).splitlines() if l.strip()]
    for line in lines:
        if "ERROR" in line:
            return line
    return lines[-1] if lines else "unknown error"


def read_header(path: str) -> sitk.ImageFileReader:
    """Header of an image file (no pixel data), or a CPS4Error naming the file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise CPS4Error(f"cannot read {path} ({one_line(e)}). Fix: replace it with a valid NIfTI file "
                        f"(.nii.gz) or move it out of the source folder") from None
    return reader


def read_image(path: str) -> sitk.Image:
    """SimpleITK read with a CPS4Error naming the file when it is not a readable image."""
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise CPS4Error(f"cannot read {path} ({one_line(e)}). Fix: replace it with a valid NIfTI file "
                        f"(.nii.gz) or move it out of the source folder") from None


def geometry(obj) -> dict:
    """Size, spacing, origin, direction of a sitk.Image or a sitk.ImageFileReader after ReadImageInformation."""
    return {"size": tuple(int(s) for s in obj.GetSize()), "spacing": tuple(obj.GetSpacing()),
            "origin": tuple(obj.GetOrigin()), "direction": tuple(obj.GetDirection())}


def geometry_mismatch(a: dict, b: dict) -> Optional[str]:
    """None when the two geometries agree, else a short description of the first difference."""
    if a["size"] != b["size"]:
        return f"shape {a['size']} vs {b['size']}"
    if not np.allclose(a["spacing"], b["spacing"]):
        return f"spacing {a['spacing']} vs {b['spacing']}"
    if not np.allclose(a["origin"], b["origin"], rtol=0, atol=_ORIGIN_ATOL):
        return f"origin {a['origin']} vs {b['origin']}"
    if not np.allclose(a["direction"], b["direction"], rtol=0, atol=_DIRECTION_ATOL):
        return f"direction {a['direction']} vs {b['direction']}"
    return None


def copy_file(src: str, dst: str) -> None:
    """Plain byte copy (the source file is only read)."""
    shutil.copyfile(src, dst)


def write_nifti_gz(src: str, dst: str, image: Optional[sitk.Image] = None) -> None:
    """Copy `src` to `dst` (.nii.gz): a byte copy when it is already .nii.gz, else re-written by SimpleITK."""
    if src.lower().endswith(".nii.gz"):
        copy_file(src, dst)
    else:
        sitk.WriteImage(image if image is not None else read_image(src), dst, useCompression=True)

