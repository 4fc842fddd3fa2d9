"""The loss-curve plot of a training run (matplotlib PNG): training and validation loss by tokens.

But: it only draws the history the training loop recorded.
"""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(history: list[dict], path: Path, title: str) -> Path:
    """Draw `history` (dicts with `tokens` and `loss` or `val_loss`) to a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["tokens"], h["loss"]) for h in history if "loss" in h]
    val = [(h["tokens"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5, markersize=3)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
