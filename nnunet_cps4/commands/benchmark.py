"""`nnUNetv2_cps4_benchmark`: CPS4 against supervised nnU-Net and the mean teacher under one protocol (see
nnunet_cps4.experiments.benchmark)."""
import argparse
import sys
from typing import Optional, Sequence

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.data.phantom import field as phantom
from nnunet_cps4.errors import CPS4Error
from nnunet_cps4.experiments.benchmark import PRESETS, run_benchmark
from nnunet_cps4.experiments.report import BASELINE
from nnunet_cps4.experiments.variants import ALL_SCHEDULES, METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_cps4_benchmark",
                                description="CPS4 vs supervised nnU-Net and the mean teacher under one protocol "
                                            "(see the module docstring of nnunet_cps4.experiments.benchmark).")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="default settings (default: cpu)")
    p.add_argument("--out", default="cps4_benchmark", help="benchmark folder (default ./cps4_benchmark)")
    p.add_argument("--source", help="fully labeled nnU-Net raw dataset with imagesTs/labelsTs (id, name or "
                                    "folder); default: a spine phantom")
    p.add_argument("--fractions", type=float, nargs="+", help="labeled fractions")
    p.add_argument("--seeds", type=int, nargs="+", help="split seeds (which cases are labeled)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    p.add_argument("--schedule", choices=sorted(ALL_SCHEDULES))
    p.add_argument("--device", choices=("cpu", "cuda", "mps"))
    p.add_argument("--configuration", default="2d")
    p.add_argument("--batch-size", type=int, default=2, help="batch size of every method (plans copy); 0: as "
                                                             "planned by nnU-Net")
    p.add_argument("--fold", default="all")
    p.add_argument("--phantom-cases", type=int)
    p.add_argument("--phantom-test", type=int)
    p.add_argument("--phantom-size")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--phantom-field", choices=phantom.FIELDS,
                   help="phantom field of view (nnUNetv2_cps4_make_phantom --field; default: the preset's)")
    p.add_argument("--repeats", type=int, default=1,
                   help="trainings of every method per split (default 1). nnU-Net training is not deterministic: "
                        "with N > 1 the report gives the run-to-run spread and averages each split's trainings")
    p.add_argument("--no-cost", action="store_true", help="skip the per-iteration cost measurement")
    p.add_argument("--report", default="results", help="name of the report files <out>/<report>.{json,md,png}; "
                                                      "several reports can share one benchmark folder")
    return p


def parse_args(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("fractions", "seeds", "methods", "schedule", "device", "phantom_cases", "phantom_test"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.phantom_size is None:
        args.phantom_size = preset["phantom_size"]
    if args.phantom_field is None:
        args.phantom_field = preset.get("phantom_field", phantom.DEFAULT_FIELD)
    if args.repeats < 1:
        raise CPS4Error(f"--repeats {args.repeats}: every method needs at least one training per split. Fix: "
                        f"--repeats 1 or more")
    args.cost = preset["cost"] and not args.no_cost
    args.cost_steps = preset.get("cost_steps", {})  # measure_cost's warmup/steps where a preset shortens them
    args.batch_size = args.batch_size or None
    if BASELINE not in args.methods:
        args.methods = [BASELINE] + args.methods  # the supervised baseline is always reported
    args.argv = argv
    return args


def _main(argv: Optional[Sequence[str]] = None) -> None:
    run_benchmark(parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
