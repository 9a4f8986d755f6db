"""The loss/accuracy curves of a training run, as a PNG beside its checkpoint."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: servers and CI have no display
import matplotlib.pyplot as plt


def plot_curves(history: list[dict], best_epoch: int, title: str, path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], label="validation")
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_yscale("log")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
