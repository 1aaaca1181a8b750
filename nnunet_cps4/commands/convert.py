"""Console scripts nnUNetv2_cps4_convert_mrspineseg and nnUNetv2_cps4_split_labeled: the argparse front ends of
`nnunet_cps4.data.mrspineseg.convert_mrspineseg` and `nnunet_cps4.data.split.split_labeled_dataset`."""
import argparse
import json
import os
import re
from typing import Optional, Sequence, Union

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.layout import SPLIT_FILE
from nnunet_cps4.data.mrspineseg import convert_mrspineseg
from nnunet_cps4.data.split import DEFAULT_SEED, DEFAULT_TEST_FRACTION, split_counts, split_labeled_dataset


def _test_arg(value: str) -> Union[int, float]:
    """argparse type of --test: an integer case count (0 = no test set) or a fraction in (0, 1)."""
    try:
        if re.fullmatch(r"\d+", value.strip()):
            return int(value)
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a case count nor a fraction") from None
    if not 0 < fraction < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a fraction must lie in (0, 1); use an integer for a count")
    return fraction


def _fraction_arg(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise argparse.ArgumentTypeError(f"{value!r}: the labeled fraction must lie in (0, 1], e.g. 0.05")
    return fraction


_COMMON_EPILOG = (
    "Split: the seeded split first takes the test cases, then round(F x remaining) cases (at least 1) are labeled "
    "and the rest unlabeled; the same cases, F, T and seed always give the same split, written to "
    "cps4_split.json in the new dataset folder. The source is only read; the new folder is created only after "
    "the inputs are checked, and removed again if writing fails.")


def _add_common(parser: argparse.ArgumentParser, default_name: str, test_default: str) -> None:
    parser.add_argument("-d", "--dataset-id", type=int, required=True, dest="dataset_id",
                        help="id of the new dataset (1-999); it is written to $nnUNet_raw/DatasetXXX_<name>")
    parser.add_argument("--labeled-fraction", type=_fraction_arg, required=True,
                        help="fraction of the training cases (after removing the test set) that keep their "
                             "labels, in (0, 1], e.g. 0.05 for the paper's 5%% protocol")
    parser.add_argument("--test", type=_test_arg, default=None,
                        help=f"test cases: an integer count (0 = no test set) or a fraction in (0, 1). "
                             f"{test_default}")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the split (default: {DEFAULT_SEED})")
    parser.add_argument("--name", default=None, help=f"dataset name (default: {default_name})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with this id and name, only if nnunet-cps4 wrote it")


def _mrspineseg(argv: Optional[Sequence[str]]) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_convert_mrspineseg",
        description="Convert the public MRSpineSeg release (SRC/train/MR/Case<N>.nii.gz, "
                    "SRC/train/Mask/mask_case<N>.nii.gz) into a semi-supervised nnU-Net raw dataset: labeled cases "
                    "in imagesTr/labelsTr, unlabeled images in imagesUnlabeled, test cases in imagesTs/labelsTs; "
                    "case ids Case<N>, one channel (T2), MRSpineSeg's 19 labels. Every image/mask pair is checked "
                    "(readable, 3D, same shape/spacing/origin/direction, labels 0..19) before anything is written.",
        epilog=_COMMON_EPILOG)
    parser.add_argument("src", metavar="SRC", help="MRSpineSeg release folder containing train/MR and train/Mask "
                                                   "(the train folder itself is accepted too)")
    _add_common(parser, "MRSpineSeg",
                f"Default: {DEFAULT_TEST_FRACTION:g} of the cases, rounded (34 of the 172 public cases)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress while checking the cases")
    args = parser.parse_args(argv)
    folder = convert_mrspineseg(args.src, args.dataset_id, args.labeled_fraction, args.test, args.seed,
                                args.name or "MRSpineSeg", args.overwrite, verbose=args.verbose)
    with open(os.path.join(folder, SPLIT_FILE)) as f:
        split = json.load(f)
    print(f"wrote {folder}: {split_counts(split)}")


def _split(argv: Optional[Sequence[str]]) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_split_labeled",
        description="Make a semi-supervised copy of a fully labeled raw nnU-Net dataset (any number of channels, "
                    "any file ending) at a given labeled fraction, e.g. to reproduce a '5 % labeled' protocol on "
                    "your own data. Labeled cases go to imagesTr/labelsTr, the others' images to imagesUnlabeled "
                    "(their labels are not copied), test cases to imagesTs/labelsTs. dataset.json keeps the "
                    "source's entries, with numTraining = labeled cases and a 'cps4' key added.",
        epilog=_COMMON_EPILOG)
    parser.add_argument("source", metavar="SOURCE",
                        help="the labeled dataset: an id (4), a name (Dataset004_Hippocampus) in $nnUNet_raw, or a "
                             "folder path. Only its labeled training cases are split")
    _add_common(parser, "<source name>_<percent>pctLabeled, e.g. Hippocampus_5pctLabeled",
                f"Default: if the source has imagesTs with labelsTs, its labelled test cases are kept as the test "
                f"set; otherwise {DEFAULT_TEST_FRACTION:g} of the training cases, rounded. Giving --test always "
                f"holds cases out of imagesTr and ignores the source's imagesTs")
    args = parser.parse_args(argv)
    folder = split_labeled_dataset(args.source, args.dataset_id, args.labeled_fraction, args.test, args.seed,
                                   args.name, args.overwrite)
    with open(os.path.join(folder, SPLIT_FILE)) as f:
        split = json.load(f)
    print(f"wrote {folder}: {split_counts(split)}")


def main_mrspineseg(argv: Optional[Sequence[str]] = None) -> None:
    """Console script nnUNetv2_cps4_convert_mrspineseg."""
    run_cli(_mrspineseg, argv)


def main_split(argv: Optional[Sequence[str]] = None) -> None:
    """Console script nnUNetv2_cps4_split_labeled."""
    run_cli(_split, argv)
