"""How stock nnU-Net finds the plugin's trainers.

`nnUNetv2_train -tr NAME` and `nnUNetv2_predict` look a trainer up by name, first inside nnunetv2, then in every
folder listed in the environment variable `nnUNet_extTrainer` (os.pathsep-separated). nnU-Net imports every module
of such a folder as a top-level module and forgets them afterwards, so we point it at a folder that holds only a
uniquely named shim module (`ext_trainers/nnunet_cps4_trainers.py` beside this module) re-exporting the trainer classes,
which themselves live in the installed package. Never point it at the package folder (relative imports break)
or at site-packages (nnU-Net would import everything there).

`nnUNetv2_cps4_ext_trainer_path` prints that folder; `--export` prints a shell line that appends it to whatever
`nnUNet_extTrainer` already holds, so a user's own trainer folders keep working beside ours.
"""
import os
from typing import Optional, Sequence

ENV_VAR = "nnUNet_extTrainer"
EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


def ext_trainer_value(current: Optional[str] = None, folders: Sequence[str] = (EXT_TRAINER_FOLDER,)) -> str:
    """`nnUNet_extTrainer` value with `folders` (default: the public trainers' folder) appended to `current`
    (default: the environment's value), each once."""
    if current is None:
        current = os.environ.get(ENV_VAR, "")
    entries = [p for p in current.split(os.pathsep) if p.strip()]
    for folder in folders:
        if not any(os.path.abspath(p) == folder for p in entries):
            entries.append(folder)
    return os.pathsep.join(entries)
