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
