from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.plots import (
    collapse_prediction_figure,
    final_spectrum_figure,
    spectrum_history_figure,
)
from directclr.toys import StrongAugmentationConfig, json_records, noise_sweep

logger = logging.getLogger(__name__)


def run_noise_sweep(
    params: StrongAugmentationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train the one-layer toy at every noise level: the embedding spectrum and the theory's
    matrix over training, predicted against observed collapse over training, and a summary
    per noise level."""
    spectra, theory, prediction, summary = noise_sweep(params)
    exact = params.loss == "dot_product"
    matrix = (
        "the exact matrix X~ of the dot-product loss trained (-dL/dW~ = W~ X~ / (N tau))"
        if exact
        else "Eq. 6's X on L2-normalised z (an approximation for the cosine loss trained)"
    )
    spectrum = "raw z (np.cov)" if params.spectrum == "raw" else "L2-normalised z"
    metrics = {
        "runs": json_records(summary),
        "parameters": params.model_dump(),
        "theory_matrix": matrix,
        "predicted_collapsed": f"eigenvalues of {matrix} below -{params.negative_eps} times its "
        "largest absolute eigenvalue",
        "observed_collapsed": f"eigenvalues of the covariance of {spectrum} on clean inputs, "
        "after training, numerically zero or below the deepest cliff of the log spectrum (a "
        f"drop of >= {params.cliff_decades} decades, steeper than i^-{params.cliff_slope})",
        "principal_cos2": "mean cos^2 of the principal angles between the predicted "
        "eigenvectors and W's right singular vectors whose squared singular value collapsed "
        "by the same rule (NaN/None when either set is empty)",
    }
    for run in metrics["runs"]:
        logger.info(
            "toy_strong_augmentation: noise %.2f -> collapsed %d of %d (X predicts %d at the "
            "start, %d at the end; cos^2 %s); noisy/clean weight ratio %.3g",
            run["noise"], run["observed_collapsed"], params.dim, run["predicted_collapsed"],
            run["negative_x_eigenvalues_final"], run["principal_cos2_final"],
            run["noisy_to_clean_weight_ratio"],
        )  # fmt: skip
    return spectra, theory, prediction, summary, metrics


def plot_noise_sweep(
    spectrum_history: pd.DataFrame, collapse_prediction: pd.DataFrame
) -> tuple[plt.Figure, plt.Figure, plt.Figure]:
    """The embedding spectrum over the steps per noise level, the final one of each, and
    predicted against observed collapse over training."""
    over_steps = spectrum_history_figure(
        spectrum_history, "one linear layer, noise on half the inputs", time="step", panel="noise"
    )
    final = final_spectrum_figure(
        spectrum_history, "noise", "one linear layer: final embedding spectrum per noise level"
    )
    prediction = collapse_prediction_figure(
        collapse_prediction, "one linear layer: predicted against observed collapse"
    )
    return over_steps, final, prediction
