"""`nnUNetv2_cps4_order_levels`: relabel the vertebrae and discs of nnU-Net predictions by their order along the
spine, from the anchor class, keeping the labels that are already in order (nnunet_cps4.method.spine_order).

Post-processing for any prediction folder: every label file <case><file_ending> of -i (file ending from the raw
dataset.json) is ordered in its own dimension (3D volumes in 3D) with the spine order of the dataset's prompt file,
found as the trainers find it (nnUNet_cps4_prompts, else dataset.json "cps4": {"prompt_file": ...}), or of -p. The
result goes to -o with the input's geometry (SimpleITK CopyInformation). Components that cannot be placed
consistently (beyond the end of the order, fragments that do not fit, isolated blobs, specks) are written as
background. When nnU-Net saved probabilities (<case>.npz, --save_probabilities) they anchor the order in cases
without the anchor class. -i is only read; -o must be another folder.
"""
import argparse
import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.image_io import read_header, read_image
from nnunet_cps4.data.layout import require_env_folder, resolve_dataset_name
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.method.prompts import (TEMPLATE_SOURCE, ClassPrompts, load_dataset_prompts, load_prompt_file,
                                        load_shipped_prompts, shipped_prompt_files)
from nnunet_cps4.method.spine_order import LevelOrder, order_levels


def _prompts(value: Optional[str], dataset_json: dict, name: str) -> ClassPrompts:
    if value is None:
        return load_dataset_prompts(dataset_json, name)
    stem = value[:-5] if value.endswith(".json") else value
    if "/" not in value and os.sep not in value and stem in shipped_prompt_files():
        return load_shipped_prompts(stem, dataset_json)
    return load_prompt_file(value, dataset_json)


def _probabilities(folder: str, case: str, shape, channels: int) -> Optional[np.ndarray]:
    """nnU-Net's saved probabilities of a case (<case>.npz), when present and of the label map's shape."""
    path = os.path.join(folder, case + ".npz")
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as npz:
            probabilities = npz["probabilities"]
    except (OSError, ValueError, KeyError):
        return None
    fits = probabilities.ndim == len(shape) + 1 and probabilities.shape[1:] == tuple(shape)
    return probabilities if fits and probabilities.shape[0] >= channels else None


def _summary(case: str, report: dict, names: Dict[int, str]) -> str:
    name = lambda i: names.get(int(i), str(i))  # noqa: E731
    if not report["changed_voxels"]:
        what = "unchanged"
    else:
        parts = [f"{report['changed_voxels']} voxels changed"]
        if report["relabelled"]:
            parts.append("relabelled " + ", ".join(f"{name(a)} -> {name(b)}" for a, b in report["relabelled"]))
        if report["ignored"]:
            parts.append(f"{report['ignored']} component(s) ({report['ignored_voxels']} voxels) written as background")
        what = "; ".join(parts)
    anchor = report["anchor"]
    found = (f"{report['structures']} structures, anchor {name(anchor['label'])} ({anchor['rule']})" if anchor
             else "no vertebra or disc")
    return f"{case}: {what} [{found}]"


def _main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_order_levels",
        description="Relabel the vertebrae and discs of a folder of nnU-Net predictions by their order along the "
                    "spine, from the anchor class of the dataset's spine order (prompt file key "
                    "\"spine_order\"). Components that cannot be placed consistently are written as background. "
                    "The input folder is never modified.")
    parser.add_argument("-i", required=True, help="folder of predictions (<case><file_ending>), only read")
    parser.add_argument("-o", required=True, help="output folder, not -i (created; files of the same name are "
                                                  "overwritten, nothing else is touched)")
    parser.add_argument("-d", required=True, help="dataset id or name: its raw dataset.json gives the labels, the "
                                                  "file ending and the prompt file")
    parser.add_argument("-p", help="prompt file with a spine order (shipped name or path) instead of the dataset's")
    args = parser.parse_args(argv)

    if not os.path.isdir(args.i):
        raise CPS4Error(f"input folder {args.i} does not exist. Fix: pass the folder nnUNetv2_predict wrote as -i")
    if os.path.realpath(args.i) == os.path.realpath(args.o):
        raise CPS4Error(f"-o {args.o} is the input folder; it must differ from -i so that the predictions are never "
                        f"modified. Fix: choose another output folder")
    name = resolve_dataset_name(args.d)
    raw_json = os.path.join(require_env_folder("nnUNet_raw"), name, "dataset.json")
    try:
        with open(raw_json, encoding="utf-8") as f:
            dataset_json = json.load(f)
        ending = dataset_json["file_ending"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CPS4Error(f"cannot read the file ending from {raw_json} ({type(e).__name__}: {e}). Fix: the raw "
                        f"dataset folder needs nnU-Net's dataset.json with \"file_ending\"") from None
    prompts = _prompts(args.p, dataset_json, name)
    order = LevelOrder.from_prompts(prompts)
    if order is None:
        source = "built from the label names" if prompts.source == TEMPLATE_SOURCE else f"from {prompts.source}"
        raise CPS4Error(f"the class prompts of {name} ({source}) declare no spine order. Fix: add "
                        f"\"spine_order\": {{\"sequence\": [...], \"discs\": [...], \"anchor\": ...}} to its prompt "
                        f"file (text_prompts/README.md), select a prompt file that has one in {raw_json} (e.g. "
                        f"\"cps4\": {{\"prompt_file\": \"mrspineseg\"}}), or pass one with -p")
    cases = sorted(f[:-len(ending)] for f in os.listdir(args.i)
                   if f.endswith(ending) and len(f) > len(ending) and os.path.isfile(os.path.join(args.i, f)))
    if not cases:
        raise CPS4Error(f"{args.i} holds no label file <case>{ending}. Fix: pass a folder of nnU-Net predictions "
                        f"of {name} as -i")
    for case in cases:  # every file readable before anything is written
        read_header(os.path.join(args.i, case + ending))
    names = {**{0: "background"}, **dict(zip(prompts.label_ids, prompts.class_names))}
    os.makedirs(args.o, exist_ok=True)
    for case in cases:
        path = os.path.join(args.i, case + ending)
        image = read_image(path)
        labels = sitk.GetArrayFromImage(image)
        if labels.ndim not in (2, 3) or not np.array_equal(labels, np.round(labels)):
            raise CPS4Error(f"{path} is not a 2D or 3D label map ({labels.ndim}D, {labels.dtype}). Fix: pass "
                            f"nnU-Net's segmentations, not probabilities or multi-channel images, as -i")
        probabilities = _probabilities(args.i, case, labels.shape, max(order.labels) + 1)
        new, report = order_levels(labels.astype(np.int32), order, probabilities, ignore_value=0,
                                   spacing=image.GetSpacing()[::-1])
        out = sitk.GetImageFromArray(new.astype(labels.dtype))
        out.CopyInformation(image)
        sitk.WriteImage(out, os.path.join(args.o, case + ending), useCompression=True)
        print(_summary(case, report, names), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
