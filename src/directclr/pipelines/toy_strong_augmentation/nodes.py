from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.plots import (
    collapse_prediction_figure,
    final_spectrum_figure,
    spectrum_history_figure,
)
from directclr.toys import (
    StrongAugmentationConfig,
    noise_sweep,
    noise_sweep_lines,
    noise_sweep_metrics,
    prediction_note,
    spectrum_note,
)

logger = logging.getLogger(__name__)


def run_noise_sweep(
    params: StrongAugmentationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train the one-layer toy at every noise level: the embedding spectrum and the theory's
    matrix over training, predicted against observed collapse over training, a summary per
    noise level and the metrics file (:func:`directclr.toys.noise_sweep_metrics`)."""
    spectra, theory, prediction, summary = noise_sweep(params)
    metrics = noise_sweep_metrics(summary, params)
    for line in noise_sweep_lines(metrics):
        logger.info(line)
    return spectra, theory, prediction, summary, metrics


def plot_noise_sweep(
    spectrum_history: pd.DataFrame,
    collapse_prediction: pd.DataFrame,
    params: StrongAugmentationConfig,
) -> tuple[plt.Figure, plt.Figure, plt.Figure]:
    """The embedding spectrum over the steps per noise level, the final one of each, and
    predicted against observed collapse over training, each captioned with its settings'
    conventions."""
    note = spectrum_note(params)
    over_steps = spectrum_history_figure(
        spectrum_history, "one linear layer, noise on half the inputs", time="step",
        panel="noise", note=note,
    )  # fmt: skip
    final = final_spectrum_figure(
        spectrum_history, "noise", "one linear layer: final embedding spectrum per noise level",
        note=note,
    )  # fmt: skip
    prediction = collapse_prediction_figure(
        collapse_prediction, "one linear layer: predicted against observed collapse",
        prediction_note(params),
    )  # fmt: skip
    return over_steps, final, prediction
