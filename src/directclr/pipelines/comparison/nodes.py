from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from directclr.comparison import (
    compare,
    comparison_summary,
    split_seed_namespace,
    summary_markdown,
    to_markdown,
)
from directclr.plots import collapsed_vs_d0_figure, spectra_overlay_figure

logger = logging.getLogger(__name__)

ARTIFACTS_PER_RUN = ("linear_eval_metrics", "spectrum_metrics", "spectrum", "training_history")
Report = tuple[pd.DataFrame, str, pd.DataFrame, str, plt.Figure, plt.Figure]


def run_artifacts(space: str) -> list[str]:
    """The datasets of one run and seed (its namespace ``space``) that the report reads, in
    the order of ``ARTIFACTS_PER_RUN``; each is also the name of the report's input."""
    return [f"{space}.{artifact}" for artifact in ARTIFACTS_PER_RUN]


def make_compare_runs(comparison: str, namespaces: dict[str, list[str]]) -> Callable[..., Report]:
    """The node function for one comparison. Its named inputs: ``reference`` (the reference
    run's name) and, for each run and seed of ``namespaces``, its artifacts by dataset name
    (:func:`run_artifacts`). It returns the per-seed table and its Markdown, the summary over
    seeds (mean, std and paired differences against the reference) and its Markdown, the
    spectra of all runs with their spread over seeds, and collapsed dimensions against d0 for
    the runs that have a d0 (:func:`directclr.comparison.compare`)."""
    order = [(run, split_seed_namespace(space)[1], run_artifacts(space))
             for run, spaces in namespaces.items() for space in spaces]  # fmt: skip

    def compare_runs(reference: str, **artifacts: Any) -> Report:
        runs = [(run, seed, *(artifacts[name] for name in names)) for run, seed, names in order]
        per_seed, summary, spectra, collapse = compare(runs, reference)
        logger.info(comparison_summary(comparison, per_seed, summary))
        split = per_seed["spectrum_split"].iloc[0]
        return (
            per_seed, to_markdown(per_seed), summary, summary_markdown(summary, reference),
            spectra_overlay_figure(spectra, f"{comparison}: embedding spectra"),
            collapsed_vs_d0_figure(collapse, f"{comparison}: collapse against d0 ({split} split)"),
        )  # fmt: skip

    compare_runs.__name__ = compare_runs.__qualname__ = "compare_runs"
    return compare_runs
