from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.plots import alignment_figure, final_spectrum_figure, spectrum_history_figure
from directclr.toys import (
    ImplicitRegularizationConfig,
    depth_sweep,
    depth_sweep_lines,
    depth_sweep_metrics,
    final_alignment,
    spectrum_note,
)

logger = logging.getLogger(__name__)


def run_depth_sweep(
    params: ImplicitRegularizationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train the toy at every depth: the embedding spectrum, the layers' singular values and
    the alignment of adjacent layers over training, the collapse per depth and the metrics
    file (:func:`directclr.toys.depth_sweep_metrics`)."""
    spectra, singular_values, alignment, summary = depth_sweep(params)
    metrics = depth_sweep_metrics(summary, params)
    for line in depth_sweep_lines(metrics):
        logger.info(line)
    return spectra, singular_values, alignment, summary, metrics


def plot_depth_sweep(
    spectrum_history: pd.DataFrame,
    alignment: pd.DataFrame,
    summary: pd.DataFrame,
    params: ImplicitRegularizationConfig,
) -> tuple[plt.Figure, plt.Figure, plt.Figure]:
    """The embedding spectrum over the steps per depth, the final one of each (captioned
    with the settings' spectrum convention), and the final alignment matrices
    |V_{l+1}^T U_l| of every deep run, titled with which collapsed rows peak where."""
    note = spectrum_note(params)
    over_steps = spectrum_history_figure(
        spectrum_history, "linear networks, weak augmentation", time="step", panel="layers",
        note=note,
    )  # fmt: skip
    final = final_spectrum_figure(
        spectrum_history, "layers", "weak augmentation: final embedding spectrum per depth",
        note=note,
    )  # fmt: skip
    matrices = final_alignment(alignment, summary)
    return over_steps, final, alignment_figure(matrices, "alignment of adjacent layers (final)")
