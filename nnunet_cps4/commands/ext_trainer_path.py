"""`nnUNetv2_cps4_ext_trainer_path`: the folder to add to nnUNet_extTrainer (see nnunet_cps4.nnunet.discovery)."""
import argparse
from typing import Optional, Sequence

from nnunet_cps4.nnunet.discovery import ENV_VAR, EXT_TRAINER_FOLDER, ext_trainer_value


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_cps4_ext_trainer_path",
        description="Print the folder to add to nnUNet_extTrainer so that nnUNetv2_train/nnUNetv2_predict find "
                    "the nnunet-cps4 trainers. Typical use: eval \"$(nnUNetv2_cps4_ext_trainer_path --export)\"")
    parser.add_argument("--export", action="store_true",
                        help="print 'export nnUNet_extTrainer=...' with our folder appended to the current value")
    args = parser.parse_args(argv)
    if args.export:
        print(f"export {ENV_VAR}='{ext_trainer_value()}'")
    else:
        print(EXT_TRAINER_FOLDER)
