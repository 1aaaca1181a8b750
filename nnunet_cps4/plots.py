"""Plots beside nnU-Net's progress.png, drawn from the same logger."""
from typing import Dict, List, Sequence

import matplotlib

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
