"""Seaborn figures of collapse."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from directclr.analysis import log_spectrum  # noqa: E402


def spectrum_figure(spectra: dict[str, np.ndarray], title: str) -> plt.Figure:
    """Log10 covariance eigenvalues against their rank, one line per named spectrum."""
    frame = pd.concat(
        pd.DataFrame(
            {
                "singular value rank index": np.arange(1, len(lam) + 1),
                "log10 eigenvalue": log_spectrum(lam, floor=1e-20),
                "vectors": name,
            }
        )
        for name, lam in spectra.items()
    )
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    sns.lineplot(
        data=frame, x="singular value rank index", y="log10 eigenvalue", hue="vectors", ax=ax
    )
    ax.set_title(title)
    ax.text(
        0.01,
        0.01,
        "eigenvalues of the covariance of L2-normalised vectors (zeros drawn at 1e-20)",
        transform=ax.transAxes,
        fontsize=7,
        color="0.4",
    )
    fig.tight_layout()
    plt.close(fig)
    return fig


def training_history_figure(history: pd.DataFrame, title: str) -> plt.Figure:
    """Loss, online-probe accuracy and effective ranks of r and z against the epoch."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=120)
    sns.lineplot(data=history, x="epoch", y="loss", ax=axes[0], marker="o")
    axes[0].set_title("InfoNCE loss")
    sns.lineplot(data=history, x="epoch", y="online_probe_accuracy", ax=axes[1], marker="o")
    axes[1].set_title("online linear probe (train batches)")
    ranks = history.melt(
        id_vars="epoch", value_vars=["effective_rank_r", "effective_rank_z"],
        var_name="vectors", value_name="effective rank",
    ).dropna()  # fmt: skip
    ranks["vectors"] = ranks["vectors"].str.removeprefix("effective_rank_")
    sns.lineplot(data=ranks, x="epoch", y="effective rank", hue="vectors", ax=axes[2], marker="o")
    axes[2].set_title("effective rank on a fixed probe batch")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
