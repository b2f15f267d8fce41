from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from directclr.analysis import (
    collapsed_dimensions,
    covariance_spectrum,
    effective_rank,
    log_spectrum,
)
from directclr.plots import spectrum_figure

logger = logging.getLogger(__name__)


class SpectrumConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gap_decades: float = Field(
        4.0, gt=0, description="an eigenvalue this many powers of ten below the largest is collapsed"
    )


def compute_spectrum(
    embeddings: dict, params: SpectrumConfig
) -> tuple[pd.DataFrame, dict, plt.Figure]:
    """Spectra of r and z on train and test, their rank metrics, and a figure of the test ones."""
    rows, metrics, test_spectra = [], {}, {}
    for split in ("train", "test"):
        for kind in ("r", "z"):
            lam = covariance_spectrum(embeddings[f"{split}_{kind}"])
            name = f"{kind}_{split}"
            rows.append(
                pd.DataFrame(
                    {
                        "vectors": kind,
                        "split": split,
                        "index": range(1, len(lam) + 1),
                        "eigenvalue": lam,
                        "log10_eigenvalue": log_spectrum(lam),
                    }
                )
            )
            metrics[name] = {
                "dimensions": int(len(lam)),
                "effective_rank": effective_rank(lam),
                "collapsed_dimensions": collapsed_dimensions(lam, params.gap_decades),
            }
            if split == "test":
                test_spectra[f"{kind} ({len(lam)}-d)"] = lam
    metrics["convention"] = (
        "eigenvalues of the covariance of L2-normalised vectors; effective rank (Roy & Vetterli) "
        "of their square roots, the singular values of the centred matrix"
    )
    metrics["gap_decades"] = params.gap_decades
    figure = spectrum_figure(test_spectra, "embedding spectrum (test split)")
    logger.info(
        "spectrum: embeddings -> spectra (effective rank r %.1f of %d, z %.1f of %d; "
        "collapsed r %d, z %d)",
        metrics["r_test"]["effective_rank"], metrics["r_test"]["dimensions"],
        metrics["z_test"]["effective_rank"], metrics["z_test"]["dimensions"],
        metrics["r_test"]["collapsed_dimensions"], metrics["z_test"]["collapsed_dimensions"],
    )  # fmt: skip
    return pd.concat(rows, ignore_index=True), metrics, figure
