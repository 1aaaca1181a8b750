"""Offline pseudo-labelling, the semi-supervised recipe nnU-Net users are usually given, as a benchmark method.

Built from nnU-Net's own commands, not re-implemented:
1. the supervised model of the same split (`nnUNetTrainerSupervised_<schedule>`) predicts the unlabeled images
   with the stock `nnUNetv2_predict` (final checkpoint, same options as the test predictions);
2. a new raw dataset `<split>_offlinePL` holds the labeled cases plus the unlabeled images with those predictions
   as labels (the split dataset is only read);
3. it is preprocessed with the split's own plans (same plans and batch size, `nnUNetv2_preprocess -plans_name`),
   so the retrained network is the same architecture;
4. stock nnU-Net (`nnUNetTrainerSupervised_<schedule>`, the same schedule, i.e. the same total iterations as every
   other method) trains on all cases; the benchmark then predicts the test set with it as with any method.
"""
import json
import os
import shutil
from typing import Callable, Tuple

from nnunet_cps4.data.layout import UNLABELED_FOLDER, case_identifiers

SUFFIX = "_offlinePL"


def prepare_offline_pseudo_labelling(raw: str, dataset_id: int, plans_id: str, args, env: dict,
                                     run: Callable[[list], float], script: Callable[[str], str],
                                     new_dataset_id: int, tag: str = "") -> Tuple[int, str]:
    """(dataset id, folder) of the pseudo-labelled copy of the split dataset `raw`, made (and preprocessed) once.

    `run` runs a console script (command list) with the benchmark's environment and log; `script` names one; `tag`
    ends the copy's name (a repeated training's copy, labelled by that repeat's supervised model in env's
    nnUNet_results)."""
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    name = os.path.basename(raw).split("_", 1)[1] + SUFFIX + tag
    folder = os.path.join(env["nnUNet_raw"], f"Dataset{new_dataset_id:03d}_{name}")
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # a copy left unfinished by an interrupted benchmark
        predictions = os.path.join(folder, "pseudo_labels_tmp")
        supervised = f"nnUNetTrainerSupervised_{args.schedule}"
        run([script("nnUNetv2_predict"), "-i", os.path.join(raw, UNLABELED_FOLDER), "-o", predictions, "-d",
             str(dataset_id), "-c", args.configuration, "-f", args.fold, "-tr", supervised, "-p", plans_id,
             "-device", args.device, "-chk", "checkpoint_final.pth"]
            + (["-npp", "0", "-nps", "0"] if args.device == "cpu" else []))
        images, labels = os.path.join(folder, "imagesTr"), os.path.join(folder, "labelsTr")
        os.makedirs(images)
        os.makedirs(labels)
        for source_folder in ("imagesTr", UNLABELED_FOLDER):
            for f in os.listdir(os.path.join(raw, source_folder)):
                if f.endswith(ending):
                    shutil.copy(os.path.join(raw, source_folder, f), os.path.join(images, f))
        for f in os.listdir(os.path.join(raw, "labelsTr")):
            shutil.copy(os.path.join(raw, "labelsTr", f), os.path.join(labels, f))
        for case in case_identifiers(os.path.join(raw, UNLABELED_FOLDER), ending):
            shutil.move(os.path.join(predictions, case + ending), os.path.join(labels, case + ending))
        shutil.rmtree(predictions)
        n_cases = len(case_identifiers(images, ending))
        assert n_cases == len(os.listdir(labels)), "every image needs its (pseudo) label"
        assert all(os.path.isfile(os.path.join(images, f"{c}_{k:04d}{ending}"))
                   for c in case_identifiers(images, ending) for k in range(n_channels))
        new_json = {k: v for k, v in dataset_json.items() if k != "cps4"}
        new_json.update(numTraining=n_cases, name=name,
                        description=f"{os.path.basename(raw)} with the supervised model's predictions as labels "
                                    f"of its unlabeled images (offline pseudo-labelling)")
        with open(os.path.join(folder, "dataset.json"), "w") as f:  # written last: marks the copy complete
            json.dump(new_json, f, indent=1)

    preprocessed = os.path.join(env["nnUNet_preprocessed"], os.path.basename(folder))
    gt = os.path.join(preprocessed, "gt_segmentations")  # nnUNetv2_preprocess writes it last
    with open(os.path.join(folder, "dataset.json")) as f:
        n_cases = json.load(f)["numTraining"]
    if not (os.path.isdir(gt) and len(os.listdir(gt)) == n_cases):
        os.makedirs(preprocessed, exist_ok=True)
        with open(os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw), plans_id + ".json")) as f:
            plans = json.load(f)
        plans["dataset_name"] = os.path.basename(folder)
        with open(os.path.join(preprocessed, plans_id + ".json"), "w") as f:
            json.dump(plans, f, indent=2)
        shutil.copy(os.path.join(folder, "dataset.json"), os.path.join(preprocessed, "dataset.json"))
        # the trainer reads the fingerprint; the plans (and their intensity statistics) are the labeled split's
        shutil.copy(os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw), "dataset_fingerprint.json"),
                    os.path.join(preprocessed, "dataset_fingerprint.json"))
        run([script("nnUNetv2_preprocess"), "-d", str(new_dataset_id), "-plans_name", plans_id, "-c",
             args.configuration, "-np", "2"])
    return new_dataset_id, folder
