"""`nnUNetv2_cps4_make_phantom`: write the synthetic spine MR phantom dataset (see `nnunet_cps4.data.phantom`).

`nnUNetv2_cps4_make_phantom -d ID [-n N] [--labeled-fraction F] [--test T] [--seed S] [--size ZxYxX]
[--field spine|lumbar] [--name NAME] [--overwrite] [--png FILE]` writes `$nnUNet_raw/DatasetID_NAME/` and prints a one-line summary;
`--png` also writes an overview picture of the first cases.
"""
import argparse
import json
import os

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data import phantom


def _size_text(size) -> str:
    return "x".join(str(int(v)) for v in size)


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="nnUNetv2_cps4_make_phantom",
                                description="Write a synthetic sagittal T2 spine MR dataset (MRSpineSeg labels) in the "
                                            "semi-supervised nnU-Net layout under $nnUNet_raw.")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id (1-999)")
    p.add_argument("-n", "--n-cases", type=int, default=phantom.DEFAULT_N,
                   help=f"number of subjects (default {phantom.DEFAULT_N})")
    p.add_argument("--labeled-fraction", type=float, default=phantom.DEFAULT_LABELED_FRACTION,
                   help=f"fraction of the training cases that get labels (default {phantom.DEFAULT_LABELED_FRACTION})")
    p.add_argument("--test", type=int, default=phantom.DEFAULT_TEST,
                   help=f"number of test cases (default {phantom.DEFAULT_TEST})")
    p.add_argument("--seed", type=int, default=phantom.DEFAULT_SEED, help="seed for anatomy and split (default 0)")
    p.add_argument("--size", default=_size_text(phantom.DEFAULT_SIZE),
                   help="voxels LRxSIxAP of the whole-spine field of view (28x400x160 mm), e.g. 7x160x64 (default); "
                        "--field lumbar keeps the spacing and crops the rows")
    p.add_argument("--field", default=phantom.DEFAULT_FIELD, choices=phantom.FIELDS,
                   help="field of view: 'spine' (S to T9, MRSpineSeg's 19 classes; default) or 'lumbar' (a 240 mm "
                        "window from the sacrum to just above L1: S, L5-L1 and their discs, 11 classes)")
    p.add_argument("--name", default=phantom.DEFAULT_NAME, help=f"dataset name (default {phantom.DEFAULT_NAME})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing phantom dataset with this id")
    p.add_argument("--png", default=None, help="also write an overview picture to this path")
    return p.parse_args(argv)


def _main(argv=None) -> None:
    args = _parse_args(argv)
    size = phantom.parse_size(args.size)
    folder = phantom.generate_phantom_dataset(args.dataset_id, args.n_cases, args.labeled_fraction, args.test,
                                              args.seed, size, args.name, args.overwrite, verbose=False,
                                              field=args.field)
    with open(os.path.join(folder, "cps4_split.json")) as f:
        split = json.load(f)
    print(f"wrote {folder}: {len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, "
          f"{len(split['test'])} test cases, size {_size_text(phantom.field_size(args.field, size))} "
          f"({args.field} field of view)")
    if not split["unlabeled"]:
        print(f"note: no unlabeled cases (--labeled-fraction {args.labeled_fraction:g}): a fully labeled dataset, e.g. "
              f"a benchmark source for nnUNetv2_cps4_split_labeled; the semi-supervised trainers need "
              f"imagesUnlabeled/, so use a fraction below 1 to train them on it directly")
    if args.png:
        print(f"overview: {phantom.save_overview_png(folder, args.png)}")


def main(argv=None) -> None:
    """Console script `nnUNetv2_cps4_make_phantom`; bad settings end with a one-line error and exit status 2."""
    run_cli(_main, argv)


if __name__ == "__main__":
    main()
