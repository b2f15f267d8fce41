from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.collapse import SpectrumConfig, collapse_summary, measure_collapse, spectra_figure
from directclr.models import artifact_config
from directclr.plots import spectrum_history_figure

logger = logging.getLogger(__name__)


def compute_spectrum(
    embeddings: dict, model: dict, spectrum_history: pd.DataFrame, params: SpectrumConfig
) -> tuple[pd.DataFrame, dict, plt.Figure, plt.Figure]:
    """Spectra and collapse metrics of r and z (for directclr also of r's two parts) on
    ``params.split`` (:func:`directclr.collapse.measure_collapse`), a figure of those spectra
    and one of the spectrum over training."""
    table, metrics = measure_collapse(embeddings, artifact_config(model), params)
    figure = spectra_figure(table, metrics)
    history_figure = spectrum_history_figure(
        spectrum_history, "spectrum over training (fixed probe batch)", time="epoch"
    )
    for line in collapse_summary(metrics):
        # In a terminal Kedro's log renders rich markup, where "[d0:]" would read as a tag.
        logger.info(line, extra={"markup": False})
    return table, metrics, figure, history_figure
