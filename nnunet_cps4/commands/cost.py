"""`nnUNetv2_cps4_cost`: per-iteration time and peak memory of trainers, as ratios to the first (see
nnunet_cps4.experiments.cost for the protocol)."""
import argparse
import json
from typing import Optional, Sequence

from nnunet_cps4.commands.cli import run_cli
from nnunet_cps4.experiments.cost import format_cost_table, measure_cost


def _main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_cps4_cost", description=__doc__)
    parser.add_argument("-d", required=True, help="dataset id or name (planned, unlabeled images present)")
    parser.add_argument("-c", default="2d")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-tr", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerCPS4"],
                        help="trainers; the first is the reference of the ratios")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("-o", help="write the results as JSON here")
    args = parser.parse_args(argv)
    cost = measure_cost(args.d, args.c, args.tr, args.p, args.device, args.warmup, args.steps)
    print(format_cost_table(cost))
    if args.o:
        with open(args.o, "w") as f:
            json.dump(cost, f, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(_main, argv)
