"""Figures people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

from distillab.engine.logger import read_metrics


def plot_learning_curves(runs: dict[str, str | Path], out_path: str | Path, title: str = "") -> Path:
    """Test top-1 and training loss per epoch for each labelled run's ``metrics.csv``; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, path in runs.items():
        rows = read_metrics(path)
        tested = [r for r in rows if "test/top1" in r]
        ax_acc.plot([r["epoch"] for r in tested], [r["test/top1"] for r in tested], marker="o", ms=3, label=label)
        ax_loss.plot([r["epoch"] for r in rows], [r["train/loss"] for r in rows], label=label)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (objective)", title="training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
