from __future__ import annotations

import logging
from collections.abc import Callable

import matplotlib.pyplot as plt
import pandas as pd

from directclr.comparison import collapse_by_d0, comparison_row, to_markdown
from directclr.plots import collapsed_vs_d0_figure, spectra_overlay_figure

logger = logging.getLogger(__name__)

ARTIFACTS_PER_RUN = ("linear_eval_metrics", "spectrum_metrics", "spectrum", "training_history")


def make_compare_runs(
    comparison: str, runs: list[str]
) -> Callable[..., tuple[pd.DataFrame, str, plt.Figure, plt.Figure]]:
    """The node function for one comparison: it takes ``ARTIFACTS_PER_RUN`` for each run,
    in order, and returns the table, its Markdown, the overlay of all spectra and the
    collapsed dimensions against d0 of the runs that have a d0."""

    def compare_runs(*artifacts) -> tuple[pd.DataFrame, str, plt.Figure, plt.Figure]:
        rows, spectra, collapse = [], {}, []
        per_run = len(ARTIFACTS_PER_RUN)
        for i, run in enumerate(runs):
            linear_eval, spectrum_metrics, spectrum, history = artifacts[
                i * per_run : (i + 1) * per_run
            ]
            name = run.removeprefix(f"{comparison}.")
            rows.append(comparison_row(name, linear_eval, spectrum_metrics, history))
            spectra[name] = spectrum
            collapse.append(collapse_by_d0(name, spectrum_metrics))
        table = pd.DataFrame(rows)
        logger.info(
            "comparison %s: %d runs -> table (linear-probe top-1 on r: %s)",
            comparison, len(rows),
            ", ".join(f"{r['run']} {r['linear_probe_top1_r']:.4f}" for r in rows),
        )  # fmt: skip
        figure = spectra_overlay_figure(spectra, f"{comparison}: embedding spectra")
        by_d0 = collapsed_vs_d0_figure(
            pd.concat(collapse, ignore_index=True),
            f"{comparison}: collapse against d0 ({spectrum_metrics['split']} split)",
        )
        return table, to_markdown(table), figure, by_d0

    compare_runs.__name__ = compare_runs.__qualname__ = "compare_runs"
    return compare_runs
