from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.plots import alignment_figure, final_spectrum_figure, spectrum_history_figure
from directclr.toys import ImplicitRegularizationConfig, depth_sweep, json_records

logger = logging.getLogger(__name__)


def run_depth_sweep(
    params: ImplicitRegularizationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train the toy at every depth: the embedding spectrum, the layers' singular values and
    the alignment of adjacent layers over training, and the collapse per depth."""
    spectra, singular_values, alignment, summary = depth_sweep(params)
    metrics = {
        "runs": json_records(summary),
        "parameters": params.model_dump(),
        "collapsed": "embedding eigenvalues (covariance of "
        f"{'raw' if params.spectrum == 'raw' else 'L2-normalised'} z, clean inputs) that are "
        "numerically zero or below the deepest cliff of the log spectrum (a drop of >= "
        f"{params.cliff_decades} decades, steeper than i^-{params.cliff_slope})",
        "collapsed_rows_aligned_on_diagonal": "of the rows of |V2^T U1| for the collapsed "
        "directions (the smallest singular values), how many have their largest entry on "
        "the diagonal",
        "collapsed_rows_aligned_within_collapsed": "... how many have it in a collapsed column",
    }
    for run in metrics["runs"]:
        logger.info(
            "toy_implicit_regularization: %d layer(s) -> collapsed %d of %d (%d at init)",
            run["layers"], run["collapsed"], params.dim, run["collapsed_at_init"],
        )  # fmt: skip
    return spectra, singular_values, alignment, summary, metrics


def plot_depth_sweep(
    spectrum_history: pd.DataFrame, alignment: pd.DataFrame
) -> tuple[plt.Figure, plt.Figure, plt.Figure]:
    """The embedding spectrum over the steps per depth, the final one of each, and the
    final alignment matrices |V_{l+1}^T U_l| of every deep run."""
    over_steps = spectrum_history_figure(
        spectrum_history, "linear networks, weak augmentation", time="step", panel="layers"
    )
    final = final_spectrum_figure(
        spectrum_history, "layers", "weak augmentation: final embedding spectrum per depth"
    )
    last = alignment[alignment["step"] == alignment["step"].max()]
    matrices = {
        f"{layers} layers: |{pair}|": run.pivot_table(
            index="row", columns="column", values="value"
        ).to_numpy()
        for (layers, pair), run in last.groupby(["layers", "pair"])
    }
    return over_steps, final, alignment_figure(matrices, "alignment of adjacent layers (final)")
