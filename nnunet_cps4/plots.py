"""Plots beside nnU-Net's progress.png, drawn from the same logger."""
from typing import Dict, List, Sequence

import matplotlib
import numpy as np

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_semi_supervised_progress(logged: Dict[str, List[float]], keys: Sequence[str], out_png: str,
                                  epoch: int) -> None:
    """One small panel per logged key, epochs 0..epoch."""
    keys = [k for k in keys if len(logged.get(k, [])) > 0]
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        values = logged[key][:epoch + 1]
        ax.plot(range(len(values)), values, marker="o", markersize=3)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def _label_cmap(num_labels: int):
    from matplotlib.colors import ListedColormap

    colors = plt.get_cmap("tab20")(range(20))
    return ListedColormap([colors[i % 20] for i in range(max(num_labels, 1))])


def show_labels(ax, image, labels, num_labels: int, title: str) -> None:
    """Image in grey with a label map on top (background transparent)."""
    ax.imshow(image, cmap="gray")
    masked = np.ma.masked_where(labels == 0, labels)
    ax.imshow(masked, cmap=_label_cmap(num_labels + 1), vmin=0, vmax=num_labels, alpha=0.5, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_vlm_panels(image, seg, probs, fused, class_names: Sequence[str], out_png: str, n_maps: int = 4) -> None:
    """Image | ground truth | a few per-class maps | fused map, on the middle slice along axis 0.

    image, seg, fused: (Z, Y, X) or (Y, X); probs: (C, Z, Y, X) or (C, Y, X). The classes shown are the ones
    present in the ground truth nearest its middle (so neighbouring levels can be compared).
    """
    if image.ndim == 3:
        z = image.shape[0] // 2
        image, seg, fused, probs = image[z], seg[z], fused[z], probs[:, z]
    present = [c for c in range(len(class_names)) if np.any(seg == c + 1)]
    start = max(0, len(present) // 2 - n_maps // 2)
    shown = present[start:start + n_maps] or list(range(min(n_maps, len(class_names))))
    n = len(class_names)
    fig, axes = plt.subplots(1, 3 + len(shown), figsize=(2.2 * (3 + len(shown)), 4.2))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image", fontsize=8)
    axes[0].axis("off")
    show_labels(axes[1], image, seg, n, "ground truth")
    for ax, c in zip(axes[2:], shown):
        ax.imshow(probs[c], cmap="magma", vmin=0, vmax=1)
        ax.contour(seg == c + 1, levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(f"map '{class_names[c]}'", fontsize=8)
        ax.axis("off")
    show_labels(axes[-1], image, fused, n, "fused map")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def save_pseudo_label_panels(rows, num_labels: int, out_png: str) -> None:
    """One row per unlabeled case: image | teacher label | y_text (VLM) | refined (combined) label."""
    titles = ("image", "teacher", "y_text (VLM)", "refined")
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 3.6 * len(rows)), squeeze=False)
    for r, (key, image, teacher, text, combined) in enumerate(rows):
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].set_title(f"{key}: {titles[0]}", fontsize=8)
        axes[r, 0].axis("off")
        for c, (labels, title) in enumerate(zip((teacher, text, combined), titles[1:]), start=1):
            show_labels(axes[r, c], image, labels, num_labels, title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def save_prediction_panels(rows, method_names: Sequence[str], num_labels: int, out_png: str) -> None:
    """One row per test case: image | reference | each method's prediction (middle slice along axis 0).

    rows: [(case, image, reference, [prediction per method])], arrays (Z, Y, X) or (Y, X).
    """
    titles = ["image", "reference"] + list(method_names)
    height, width = rows[0][1].shape[-2:]  # rows high enough for the slices' aspect (the whole spine: about 2)
    row_height = 1.9 * height / width + 0.4
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.9 * len(titles), row_height * len(rows)), squeeze=False)
    for r, (case, image, reference, predictions) in enumerate(rows):
        if image.ndim == 3:
            z = image.shape[0] // 2
            image, reference, predictions = image[z], reference[z], [p[z] for p in predictions]
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].set_title(case, fontsize=8)
        axes[r, 0].axis("off")
        for c, (labels, title) in enumerate(zip([reference] + list(predictions), titles[1:]), start=1):
            show_labels(axes[r, c], image, labels, num_labels, title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
