from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Literal

import matplotlib.pyplot as plt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from directclr.comparison import CONTROL
from directclr.framework.parameters import lookup
from directclr.plots import metric_vs_accuracy_figure
from directclr.selection import (
    ACCURACIES,
    ALL,
    LEVEL,
    MIN_RUNS,
    OK,
    RESAMPLES,
    metric_columns,
    rank_metrics,
    rho_text,
    selection_markdown,
)

logger = logging.getLogger(__name__)

# The columns that say which run a row is, first in the runs table.
RUN_COLUMNS = ["comparison", "namespace", "run", "seed", "method", "temperature"]
PROBE = "linear_probe_top1_r"


class SelectionConfig(BaseModel):
    """Which runs to rank the label-free metrics over, and how (parameters_selection.yml)."""

    model_config = ConfigDict(extra="forbid")

    comparisons: list[str] = Field(default_factory=lambda: ["sweep"], min_length=1)
    source: Literal["auto", "catalog", "mlflow"] = Field(
        "auto",
        description="catalog: the latest per-seed table of each comparison; mlflow: every "
        "finished run of those comparisons in the tracking store, across kedro runs; auto: "
        "mlflow when tracking is on",
    )
    keep_control: bool = False
    min_runs: int = Field(MIN_RUNS, ge=3)
    resamples: int = Field(RESAMPLES, ge=100)
    level: float = Field(LEVEL, gt=0, lt=1)
    seed: int = 0


def _temperature(run: str, entries: dict, recipe: dict) -> float:
    """A run's InfoNCE temperature as the parameter files set it: its own, else the shared
    recipe's; NaN for the control, which never trains, and for a run no longer configured."""
    if run == CONTROL or lookup(entries or {}, run) is None:
        return math.nan
    own = lookup(entries, f"{run}.pretraining.temperature")
    value = own if own is not None else lookup(recipe or {}, "temperature")
    return math.nan if value is None else float(value)


def tracked_runs(tracked: pd.DataFrame, comparisons: list[str]) -> pd.DataFrame:
    """The runs of ``comparisons`` among the tracking store's finished model runs
    (:class:`~directclr.framework.tracking.TrackedRunsDataset`): those that reached
    linear_eval, the newest of each namespace and checkpoint (a rerun of the same settings on
    the same data is one run, not two), with ``comparison``, ``run`` and ``seed`` read from
    the namespace."""
    frames = []
    if tracked is not None and len(tracked) and PROBE in tracked:
        for name in comparisons:
            parts = tracked["namespace"].str.extract(rf"^{re.escape(name)}\.(.+)\.seed_(\d+)$")
            mine = tracked[parts[0].notna() & tracked[PROBE].notna()].copy()
            mine["comparison"] = name
            mine["run"] = parts.loc[mine.index, 0]
            mine["seed"] = parts.loc[mine.index, 1].astype(int)
            mine = mine.sort_values("start_time", ascending=False)
            frames.append(mine.drop_duplicates(["namespace", "checkpoint_key"]))
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(runs):
        runs.loc[runs["run"] == CONTROL, "temperature"] = math.nan  # it never trained
    return runs


def make_gather_runs(comparisons: list[str]) -> Callable[..., pd.DataFrame]:
    """The node that reads finished runs: it takes the per-seed table of each of
    ``comparisons`` (in that order), the tracking store's runs, the selection settings, the
    shared ``pretraining`` recipe, then each comparison's parameters, and returns one table
    of runs with the ``comparison``, the run's ``namespace`` and its ``temperature`` in
    front. From the catalog (``source: catalog``, or ``auto`` with tracking off): the rows
    of every per-seed table, temperatures read from the parameters. From MLflow (``source:
    mlflow``, or ``auto`` with tracking on): every finished run of those comparisons in the
    store, from every kedro run so far (:func:`tracked_runs`). The random_init control is
    kept here; whether it is ranked is :func:`rank_runs`' choice."""

    def gather_runs(*inputs) -> pd.DataFrame:
        count = len(comparisons)
        tables, tracked, params = inputs[:count], inputs[count], inputs[count + 1]
        recipe, configured = inputs[count + 2], inputs[count + 3 :]
        if isinstance(params, dict):
            params = SelectionConfig.model_validate(params)
        if params.source == "mlflow" and tracked is None:
            raise ValueError(
                "selection.source=mlflow, but tracking is off (DIRECTCLR_TRACKING=off): "
                "switch tracking on, or set selection.source=catalog"
            )
        if tracked is not None and params.source != "catalog":
            runs = tracked_runs(tracked, comparisons)
            front = [c for c in RUN_COLUMNS if c in runs]
            runs = runs[front + [c for c in runs.columns if c not in front]]
            logger.info("selection: %d finished runs of %s from the MLflow tracking store",
                        len(runs), ", ".join(comparisons))  # fmt: skip
            return runs
        frames = []
        for name, table, entries in zip(comparisons, tables, configured, strict=True):
            frame = table.copy()
            frame["comparison"] = name
            pairs = zip(frame["run"], frame["seed"], strict=True)
            frame["namespace"] = [f"{name}.{run}.seed_{int(seed)}" for run, seed in pairs]
            temperature = pd.Series([_temperature(run, entries, recipe) for run in frame["run"]],
                                    index=frame.index, dtype=float)  # fmt: skip
            if "temperature" in frame:  # a table that records it is believed first
                temperature = pd.to_numeric(frame["temperature"]).fillna(temperature)
            frame["temperature"] = temperature
            frames.append(frame)
        runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        front = [c for c in RUN_COLUMNS if c in runs]
        runs = runs[front + [c for c in runs.columns if c not in front]]
        logger.info(
            "selection: %d runs from %s", len(runs),
            ", ".join(f"{name} ({len(t)})" for name, t in zip(comparisons, tables, strict=True)),
        )  # fmt: skip
        return runs

    gather_runs.__name__ = gather_runs.__qualname__ = "gather_runs"
    return gather_runs


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def chosen_runs(runs: pd.DataFrame, keep_control: bool) -> tuple[pd.DataFrame, list[str]]:
    """The runs to rank and a note on what was left out. The untrained random_init control
    is left out unless ``keep_control``: it answers "what does training add", not "which
    trained run is best", and an untrained network sits far from every trained one, so it
    would dominate a rank correlation. Kept, it is a method of its own (its ``method``
    column names the architecture it shares, which would put it among those runs)."""
    control = runs["run"].eq(CONTROL) if "run" in runs else pd.Series(False, index=runs.index)
    if not control.any():
        return runs, []
    if keep_control:
        kept = runs.copy()
        kept.loc[control, "method"] = CONTROL
        return kept, [
            f"The {CONTROL} control ({_runs(int(control.sum()))}, untrained) is kept, as a "
            f"method of its own (selection.keep_control=true)."
        ]
    return runs[~control].reset_index(drop=True), [
        f"The {CONTROL} control ({_runs(int(control.sum()))}, untrained) is left out: it shows "
        f"what training adds, not which trained run is best; set selection.keep_control=true "
        f"to rank it too."
    ]


def rank_runs(
    runs: pd.DataFrame, params: SelectionConfig
) -> tuple[pd.DataFrame, str, dict[str, plt.Figure]]:
    """Spearman's ρ of every label-free metric in ``runs`` with the linear-probe and kNN
    accuracies, over all runs and within each method (:func:`directclr.selection.
    rank_metrics`); the table, its Markdown, and one figure per metric of the metric
    against the linear-probe accuracy, coloured by method, ρ in the title and legend."""
    if isinstance(params, dict):
        params = SelectionConfig.model_validate(params)
    chosen, notes = chosen_runs(runs, params.keep_control)
    table = rank_metrics(chosen, min_runs=params.min_runs, resamples=params.resamples,
                         level=params.level, seed=params.seed)  # fmt: skip
    if "comparison" in chosen:
        notes.append(f"Runs of: {', '.join(dict.fromkeys(chosen['comparison']))}.")
    notes.append(f"Bootstrap seed {params.seed}; ρ as scipy.stats.spearmanr (ties averaged).")
    markdown = selection_markdown(table, chosen, notes, params.min_runs)
    figures = {}
    probe = table[table["accuracy"] == PROBE]
    for metric in metric_columns(chosen.columns) if PROBE in chosen else []:
        rows = probe[probe["metric"] == metric].set_index("group")
        overall = rho_text(rows.loc[ALL]) if ALL in rows.index else "–"
        labels = {group: f"{group}: {rho_text(row)}" for group, row in rows.iterrows()}
        figures[f"{metric}.png"] = metric_vs_accuracy_figure(
            chosen, metric, PROBE,
            f"{metric} against {ACCURACIES[PROBE]}\nSpearman ρ over all runs: {overall} "
            f"({params.level:.0%} bootstrap interval)",
            labels=labels, annotate="temperature",
        )  # fmt: skip
    ranked = probe[(probe["group"] == ALL) & (probe["status"] == OK)]
    best = ranked.reindex(ranked["rho"].abs().sort_values(ascending=False).index).head(3)
    logger.info(
        "selection: %d runs, %d metrics; largest |ρ| with the linear probe over all runs: %s",
        len(chosen), len(metric_columns(chosen.columns)),
        ", ".join(f"{r['metric']} {r['rho']:+.2f}" for _, r in best.iterrows()) or "none",
    )  # fmt: skip
    return table, markdown, figures
