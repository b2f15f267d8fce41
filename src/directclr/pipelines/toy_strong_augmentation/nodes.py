from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.plots import final_spectrum_figure, spectrum_history_figure
from directclr.toys import StrongAugmentationConfig, json_records, noise_sweep

logger = logging.getLogger(__name__)


def run_noise_sweep(
    params: StrongAugmentationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train the one-layer toy at every noise level: the embedding spectrum and the theory's
    X over training, and predicted against observed collapse per noise level."""
    spectra, theory, summary = noise_sweep(params)
    metrics = {
        "runs": json_records(summary),
        "parameters": params.model_dump(),
        "predicted_collapsed": "negative eigenvalues of the theory's X (Eq. 6) at initialisation",
        "observed_collapsed": f"embedding eigenvalues more than {params.gap_decades} decades "
        "below the largest after training (covariance of L2-normalised z, clean inputs)",
    }
    for run in metrics["runs"]:
        logger.info(
            "toy_strong_augmentation: noise %.2f -> collapsed %d of %d (X predicts %d); "
            "noisy/clean weight ratio %.3g",
            run["noise"], run["observed_collapsed"], params.dim, run["predicted_collapsed"],
            run["noisy_to_clean_weight_ratio"],
        )  # fmt: skip
    return spectra, theory, summary, metrics


def plot_noise_sweep(spectrum_history: pd.DataFrame) -> tuple[plt.Figure, plt.Figure]:
    """The embedding spectrum over the steps per noise level, and the final one of each."""
    over_steps = spectrum_history_figure(
        spectrum_history, "one linear layer, noise on half the inputs", time="step", panel="noise"
    )
    final = final_spectrum_figure(
        spectrum_history, "noise", "one linear layer: final embedding spectrum per noise level"
    )
    return over_steps, final
