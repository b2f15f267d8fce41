from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from directclr.selection import (
    SelectionConfig,
    catalog_runs,
    chosen_runs,
    metric_report,
    ranking_summary,
    reads_tracking_store,
    tracked_runs,
)

logger = logging.getLogger(__name__)


def make_gather_runs(comparisons: list[str]) -> Callable[..., pd.DataFrame]:
    """The node that reads the finished runs of ``comparisons``. Its named inputs: the
    tracking store's runs (``tracked``; None with tracking off), the selection settings
    (``params``), the shared ``pretraining`` recipe (``recipe``) and, for each comparison
    ``<name>``, its latest per-seed table (``<name>_table``) and its parameters
    (``<name>_settings``). It returns one table of runs: from MLflow (``source: mlflow``,
    or ``auto`` with tracking on) every finished run of those comparisons in the store, from
    every kedro run so far (:func:`directclr.selection.tracked_runs`); else the rows of the
    per-seed tables (:func:`directclr.selection.catalog_runs`)."""

    def gather_runs(
        tracked: pd.DataFrame | None, params: SelectionConfig, recipe: dict, **tables: Any
    ) -> pd.DataFrame:
        if reads_tracking_store(params.source, tracked):
            runs = tracked_runs(tracked, comparisons)
            logger.info("selection: %d finished runs of %s from the MLflow tracking store",
                        len(runs), ", ".join(comparisons))  # fmt: skip
            return runs
        per_seed = {name: tables[f"{name}_table"] for name in comparisons}
        settings = {name: tables[f"{name}_settings"] for name in comparisons}
        runs = catalog_runs(per_seed, settings, recipe)
        logger.info("selection: %d runs from %s", len(runs),
                    ", ".join(f"{name} ({len(t)})" for name, t in per_seed.items()))  # fmt: skip
        return runs

    gather_runs.__name__ = gather_runs.__qualname__ = "gather_runs"
    return gather_runs


def rank_runs(
    runs: pd.DataFrame, params: SelectionConfig
) -> tuple[pd.DataFrame, str, dict[str, plt.Figure]]:
    """Spearman's ρ of every label-free metric with the accuracies over the chosen runs
    (:func:`directclr.selection.metric_report`): the table, its Markdown and one figure per
    metric against the linear-probe accuracy."""
    chosen, notes = chosen_runs(runs, params.keep_control)
    table, markdown, figures = metric_report(chosen, notes, params)
    logger.info(ranking_summary(chosen, table))
    return table, markdown, figures
