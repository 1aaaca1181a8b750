"""Tiny nnU-Net raw datasets for unit tests of the data pipeline (the phantom is used for end-to-end tests)."""
import json
import os

import numpy as np
import SimpleITK as sitk


def write_image(array: np.ndarray, path: str, spacing=(1.0, 1.0, 3.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, path)


def make_toy_dataset(raw_root: str, dataset_id: int = 501, n_labeled: int = 5, n_unlabeled: int = 4,
                     n_channels: int = 1, shape=(4, 32, 16), seed: int = 0, n_test: int = 0) -> str:
    """Two box-shaped classes on noise; labeled cases c*, unlabeled u*, test t*. Returns the dataset folder."""
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_Toy")
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(seed)

    def case():
        image = rng.normal(0, 0.2, (n_channels, *shape)).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        for value in (1, 2):
            y, x = rng.integers(2, shape[1] - 8), rng.integers(2, shape[2] - 6)
            label[:, y:y + 6, x:x + 4] = value
            image[:, :, y:y + 6, x:x + 4] += value
        return image, label

    for i in range(n_labeled + n_unlabeled + n_test):
        image, label = case()
        role = "Tr" if i < n_labeled else "Unlabeled" if i < n_labeled + n_unlabeled else "Ts"
        case_id = {"Tr": "c", "Unlabeled": "u", "Ts": "t"}[role] + str(i)
        for c in range(n_channels):
            write_image(image[c], os.path.join(folder, f"images{role}", f"{case_id}_{c:04d}.nii.gz"))
        if role != "Unlabeled":
            write_image(label, os.path.join(folder, f"labels{role}", f"{case_id}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {str(c): f"MR{c}" for c in range(n_channels)},
                   "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n_labeled,
                   "file_ending": ".nii.gz"}, f)
    return folder
