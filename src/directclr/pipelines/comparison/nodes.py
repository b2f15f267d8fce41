from __future__ import annotations

import logging
from collections.abc import Callable

import matplotlib.pyplot as plt
import pandas as pd

from directclr.comparison import (
    CONTROL,
    collapse_by_d0,
    comparison_row,
    summarise,
    summary_markdown,
    to_markdown,
)
from directclr.plots import collapsed_vs_d0_figure, spectra_overlay_figure

logger = logging.getLogger(__name__)

ARTIFACTS_PER_RUN = ("linear_eval_metrics", "spectrum_metrics", "spectrum", "training_history")
Report = tuple[pd.DataFrame, str, pd.DataFrame, str, plt.Figure, plt.Figure]


def make_compare_runs(comparison: str, namespaces: dict[str, list[str]]) -> Callable[..., Report]:
    """The node function for one comparison: it takes ``ARTIFACTS_PER_RUN`` for each run and
    seed, in the order of ``namespaces``, then the reference run's name, and returns the
    per-seed table and its Markdown, the summary over seeds (mean, std and paired
    differences against the reference) and its Markdown, the spectra of all runs with their
    spread over seeds, and collapsed dimensions against d0 for the runs that have a d0."""
    order = [(run, space) for run, spaces in namespaces.items() for space in spaces]

    def compare_runs(*artifacts) -> Report:
        *per_run, reference = artifacts
        rows, spectra, collapse = [], [], []
        width = len(ARTIFACTS_PER_RUN)
        for i, (run, space) in enumerate(order):
            linear_eval, spectrum_metrics, spectrum, history = per_run[i * width : (i + 1) * width]
            seed = int(space.rsplit("seed_", 1)[1])
            rows.append(comparison_row(run, linear_eval, spectrum_metrics, history, seed))
            spectra.append(spectrum.assign(run=run, seed=seed))
            if run != CONTROL:  # collapse against d0 is a question about trained runs
                collapse.append(collapse_by_d0(run, spectrum_metrics).assign(seed=seed))
        per_seed = pd.DataFrame(rows)
        summary = summarise(per_seed, reference)
        split = per_seed["spectrum_split"].iloc[0]
        logger.info(
            "comparison %s: %d runs x %d seeds -> table (linear-probe top-1 on r, mean over "
            "seeds: %s)",
            comparison, len(namespaces), len(per_seed) // max(len(namespaces), 1),
            ", ".join(f"{r['run']} {r['linear_probe_top1_r_mean']:.4f}"
                      for _, r in summary.iterrows()),
        )  # fmt: skip
        figure = spectra_overlay_figure(
            pd.concat(spectra, ignore_index=True), f"{comparison}: embedding spectra"
        )
        by_d0 = collapsed_vs_d0_figure(
            pd.concat(collapse, ignore_index=True) if collapse else collapse_by_d0("", {}),
            f"{comparison}: collapse against d0 ({split} split)",
        )
        return (
            per_seed, to_markdown(per_seed), summary, summary_markdown(summary, reference),
            figure, by_d0,
        )  # fmt: skip

    compare_runs.__name__ = compare_runs.__qualname__ = "compare_runs"
    return compare_runs
