"""The plugin's trainers through nnU-Net's own console scripts on the shared planned toy dataset (conftest's
`planned_toy`): the helpers of the end-to-end test modules."""
import json
import os
import subprocess
import sys

import torch

from nnunet_cps4.experiments.variants import EXPERIMENT_TRAINER_FOLDER
from nnunet_cps4.nnunet.discovery import EXT_TRAINER_FOLDER, ext_trainer_value

BIN = os.path.dirname(sys.executable)
DATASET = "Dataset501_Toy"
#: nnUNet_extTrainer that finds the plugin's trainers and the benchmark's short schedules (`_smoke`), as the
#: benchmark finds them
EXT_TRAINERS = ext_trainer_value("", (EXT_TRAINER_FOLDER, EXPERIMENT_TRAINER_FOLDER))


def cli(name, *args, env, check=True, timeout=600):
    result = subprocess.run([os.path.join(BIN, name), *map(str, args)], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def model_folder(env, trainer, configuration="2d"):
    return os.path.join(env["nnUNet_results"], DATASET, f"{trainer}__nnUNetPlans__{configuration}")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def dice_on_test_set(env, pred_folder):
    """Mean foreground Dice of a prediction folder against labelsTs (nnU-Net's evaluation)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple

    labels = os.path.join(env["nnUNet_raw"], DATASET, "labelsTs")
    summary = os.path.join(pred_folder, "summary_test.json")
    compute_metrics_on_folder_simple(labels, pred_folder, [1, 2], summary, num_processes=1)
    with open(summary) as f:
        return json.load(f)["foreground_mean"]["Dice"]


def train(env, trainer, fold="0", configuration="2d", *extra, check=True):
    return cli("nnUNetv2_train", 501, configuration, fold, "-tr", trainer, "-device", "cpu", *extra, env=env,
               check=check)


def predict(env, trainer, out, configuration="2d", fold="0"):
    cli("nnUNetv2_predict", "-i", os.path.join(env["nnUNet_raw"], DATASET, "imagesTs"), "-o", out, "-d", 501,
        "-c", configuration, "-f", fold, "-tr", trainer, "-device", "cpu", "-npp", 0, "-nps", 0,
        "--disable_tta", env=env)
    return sorted(f for f in os.listdir(out) if f.endswith(".nii.gz"))
