"""Which label-free metric predicts accuracy? Rank correlations over finished runs.

The input is a table of finished runs, one row per run and seed (a comparison's per-seed
table, or several concatenated): a ``method`` column, the label-free metrics of r and z
(:data:`METRIC_STEMS`, as ``<stem>_r`` and ``<stem>_z``) and the accuracies
(:data:`ACCURACIES`). For each metric column present and each accuracy, :func:`rank_metrics`
gives Spearman's rank correlation ρ (:func:`scipy.stats.spearmanr`, ties averaged) over all
runs and within each method. RankMe's authors (Garrido et al., ICML 2023) warn that a
label-free metric ranks runs of one method, not runs across methods: read the within-method
ρ first.

Conventions, for every ρ:

* ``runs``: the runs behind it, those with both the metric and the accuracy (missing values
  are dropped, run by run);
* fewer than ``min_runs`` (default :data:`MIN_RUNS`) runs: no ρ, status ``too few``;
* a metric (or accuracy) equal over all those runs ranks nothing: no ρ, status
  ``constant metric`` (``constant accuracy``);
* the interval is the bootstrap percentile interval at ``level`` (default 95%): the runs are
  resampled with replacement (``resamples`` times, default 2000, from a generator seeded with
  ``seed``, default 0, so a table is reproduced exactly), ρ is recomputed on each resample,
  and the interval runs from the (1 - level) / 2 to the (1 + level) / 2 quantile of those ρ.
  A resample in which the metric or the accuracy is constant has no ρ and is left out; the
  number of resamples used is given. Every ρ over the same runs draws the same resamples.

A metric that rises with accuracy has ρ = +1 (its interval [1, 1]); one that falls, -1.

The runs come from a comparison's per-seed tables (:func:`catalog_runs`) or from the MLflow
tracking store (:func:`tracked_runs`); :func:`chosen_runs` decides whether the untrained
control is ranked, and :func:`metric_report` makes the table, its Markdown and the figures.
:class:`SelectionConfig` is the settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import rankdata, spearmanr

from directclr.comparison import CONTROL, lookup, seed_namespace, split_seed_namespace
from directclr.plots import metric_vs_accuracy_figure

# Label-free metrics, by stem: a column <stem>_r or <stem>_z of the runs table is a metric of
# r or of z. "lidar" also takes any "lidar_<name>_r" / "lidar_<name>_z" column.
METRIC_STEMS = (
    "effective_rank", "rankme", "nesum", "participation_ratio", "normalised_std",
    "numerical_rank", "power_law_alpha", "collapsed_dims", "lidar",
)  # fmt: skip
VECTORS = ("r", "z")
PREFIX_STEMS = ("lidar",)
# The accuracies a metric should predict, and how tables name them.
ACCURACIES = {"linear_probe_top1_r": "linear-probe top-1 on r", "knn_top1_r": "kNN top-1 on r"}
ALL = "all"
MIN_RUNS = 5
RESAMPLES = 2000
LEVEL = 0.95
OK, TOO_FEW, CONSTANT_METRIC, CONSTANT_ACCURACY = (
    "ok", "too few", "constant metric", "constant accuracy",
)  # fmt: skip
COLUMNS = [
    "metric", "vectors", "accuracy", "group", "runs", "rho", "ci_low", "ci_high", "level",
    "resamples", "status", "note",
]  # fmt: skip
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


def metric_columns(columns: Iterable[str]) -> list[str]:
    """The label-free metric columns among ``columns``, in the order of
    :data:`METRIC_STEMS`, r before z (``effective_rank_r_head`` and the like are parts of r,
    not r, and are not taken)."""
    columns = list(columns)
    found = []
    for stem in METRIC_STEMS:
        for vectors in VECTORS:
            if f"{stem}_{vectors}" in columns:
                found.append(f"{stem}_{vectors}")
            if stem in PREFIX_STEMS:
                pattern = re.compile(rf"{stem}_\w+_{vectors}")
                found += [c for c in columns if pattern.fullmatch(c) and c not in found]
    return found


def vectors_of(metric: str) -> str:
    """``r`` or ``z``: what a metric column measures."""
    return metric.rsplit("_", 1)[1]


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def bootstrap_spearman(
    x: np.ndarray, y: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile bootstrap interval of Spearman's ρ of paired ``x`` and ``y``: the runs are
    drawn with replacement ``resamples`` times from ``numpy.random.default_rng(seed)``.

    Each resample's ρ is the Pearson correlation of its average ranks, which is what
    :func:`scipy.stats.spearmanr` computes, here for all resamples at once. Resamples where
    ``x`` or ``y`` is constant have no ρ and are left out. Returns (low, high, resamples
    used); NaN bounds if none could be used."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    rx, ry = rankdata(x[draws], axis=1), rankdata(y[draws], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    sx, sy = (rx * rx).sum(axis=1), (ry * ry).sum(axis=1)
    usable = (sx > 0) & (sy > 0)
    rho = (rx * ry).sum(axis=1)[usable] / np.sqrt(sx[usable] * sy[usable])
    rho = np.clip(rho, -1.0, 1.0)
    if rho.size == 0:
        return math.nan, math.nan, 0
    low, high = np.quantile(rho, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high), int(rho.size)


def spearman(
    metric: Iterable[float],
    accuracy: Iterable[float],
    min_runs: int = MIN_RUNS,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, object]:
    """Spearman's ρ of one metric with one accuracy over a set of runs, with its bootstrap
    interval (see the module's conventions): ``runs``, ``rho``, ``ci_low``, ``ci_high``,
    ``level``, ``resamples`` (used), ``status`` (:data:`OK`, :data:`TOO_FEW`,
    :data:`CONSTANT_METRIC` or :data:`CONSTANT_ACCURACY`) and ``note`` (why there is no ρ,
    or which resamples were left out)."""
    x = pd.to_numeric(pd.Series(list(metric), dtype=object), errors="coerce").to_numpy(float)
    y = pd.to_numeric(pd.Series(list(accuracy), dtype=object), errors="coerce").to_numpy(float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    row: dict[str, object] = {
        "runs": n, "rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "level": level,
        "resamples": 0, "status": OK, "note": "",
    }  # fmt: skip
    if n < min_runs:
        what = "no run has both values" if n == 0 else f"{n} runs, fewer than {min_runs}"
        row.update(status=TOO_FEW, note=f"{what}: no ρ")
    elif _constant(x):
        row.update(status=CONSTANT_METRIC,
                   note=f"the metric is {x[0]:g} for all {n} runs: it ranks nothing")  # fmt: skip
    elif _constant(y):
        row.update(status=CONSTANT_ACCURACY,
                   note=f"the accuracy is {y[0]:g} for all {n} runs: nothing to rank")  # fmt: skip
    else:
        low, high, used = bootstrap_spearman(x, y, resamples, level, seed)
        note = (
            f"{resamples - used} of {resamples} resamples had a constant column and were left out"
            if used < resamples
            else ""
        )
        rho = float(np.clip(spearmanr(x, y).statistic, -1.0, 1.0))
        row.update(rho=rho, ci_low=low, ci_high=high, resamples=used, note=note)
    return row


def rank_metrics(
    runs: pd.DataFrame,
    accuracies: Iterable[str] = tuple(ACCURACIES),
    group_by: str = "method",
    min_runs: int = MIN_RUNS,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per metric column present in ``runs`` (:func:`metric_columns`), accuracy
    present in ``runs`` and group: all runs (group :data:`ALL`) and then each value of
    ``group_by`` in first-seen order. Columns :data:`COLUMNS`; ρ and its interval as in
    :func:`spearman`."""
    metrics = metric_columns(runs.columns)
    targets = [a for a in accuracies if a in runs.columns]
    groups: list[tuple[str, pd.DataFrame]] = [(ALL, runs)]
    if group_by in runs.columns:
        groups += [(str(name), part) for name, part in runs.groupby(group_by, sort=False)]
    rows = []
    for metric in metrics:
        for accuracy in targets:
            for name, part in groups:
                rho = spearman(part[metric], part[accuracy], min_runs, resamples, level, seed)
                rows.append({"metric": metric, "vectors": vectors_of(metric),
                             "accuracy": accuracy, "group": name, **rho})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def rho_text(row: pd.Series | dict, digits: int = 2) -> str:
    """A table cell for one ρ: ``+0.83 [+0.41, +1.00] (n = 10)``, or the reason there is
    none: ``too few (n = 4)``, ``constant metric (n = 6)``."""
    n = int(row["runs"])
    if row["status"] != OK:
        return f"{row['status']} (n = {n})"
    return (
        f"{row['rho']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
        f" (n = {n})"
    )


def selection_markdown(
    table: pd.DataFrame, runs: pd.DataFrame, notes: Iterable[str] = (), min_runs: int = MIN_RUNS
) -> str:
    """The table as Markdown: per accuracy, one row per metric and one column per group (all
    runs, then each method), each cell ρ with its interval and the runs behind it; ``notes``
    are printed under the explanation."""
    level = float(table["level"].iloc[0]) if len(table) else LEVEL
    resamples = int(table["resamples"].max()) if len(table) else 0
    lines = ["# Which label-free metric predicts accuracy?", ""]
    counts = runs["method"].value_counts(sort=False) if "method" in runs else pd.Series()
    lines.append(
        f"{len(runs)} runs ({', '.join(f'{m}: {c}' for m, c in counts.items())}). "
        f"Each cell: Spearman's ρ between the metric and the accuracy, its {level:.0%} "
        f"bootstrap percentile interval (runs resampled with replacement, {resamples} "
        f"resamples) and the runs behind it (n). *too few*: fewer than {min_runs} runs; "
        f"*constant*: the metric does not vary over those runs, so it ranks nothing."
    )
    lines += [
        "",
        "A label-free metric is meant to rank runs of one method (Garrido et al., RankMe): "
        "read the columns of each method before the one over all runs.",
    ]
    for note in notes:
        lines += ["", note] if note else []
    groups = list(dict.fromkeys(table["group"]))
    for accuracy in dict.fromkeys(table["accuracy"]):
        part = table[table["accuracy"] == accuracy]
        header = ["metric", *(f"{g} runs" if g == ALL else g for g in groups)]
        lines += ["", f"## {ACCURACIES.get(accuracy, accuracy)} (`{accuracy}`)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for metric, rows in part.groupby("metric", sort=False):
            cells = {row["group"]: rho_text(row) for _, row in rows.iterrows()}
            lines.append("| " + " | ".join([metric, *(cells.get(g, "–") for g in groups)]) + " |")
    if not len(table):
        lines += ["", "No metric and accuracy columns in the runs: nothing to correlate."]
    return "\n".join(lines) + "\n"


def reads_tracking_store(source: str, tracked: pd.DataFrame | None) -> bool:
    """Whether the runs come from the MLflow tracking store (``source: mlflow``, or ``auto``
    with tracking on: ``tracked`` is not None) rather than the comparisons' per-seed tables;
    ``mlflow`` with tracking off is refused."""
    if source == "mlflow" and tracked is None:
        raise ValueError(
            "selection.source=mlflow, but tracking is off (DIRECTCLR_TRACKING=off): "
            "switch tracking on, or set selection.source=catalog"
        )
    return tracked is not None and source != "catalog"


def _run_columns_first(runs: pd.DataFrame) -> pd.DataFrame:
    front = [c for c in RUN_COLUMNS if c in runs]
    return runs[front + [c for c in runs.columns if c not in front]]


def tracked_runs(tracked: pd.DataFrame, comparisons: list[str]) -> pd.DataFrame:
    """The runs of ``comparisons`` among the tracking store's finished model runs
    (:class:`~directclr.framework.tracking.TrackedRunsDataset`): those that reached
    linear_eval, the newest of each namespace and checkpoint (a rerun of the same settings on
    the same data is one run, not two), with ``comparison``, ``run`` and ``seed`` read from
    the namespace, and :data:`RUN_COLUMNS` first."""
    frames = []
    if tracked is not None and len(tracked) and PROBE in tracked:
        for name in comparisons:
            parts = pd.DataFrame(
                [_run_and_seed(name, space) for space in tracked["namespace"]],
                index=tracked.index, columns=["run", "seed"],
            )  # fmt: skip
            mine = tracked[parts["run"].notna() & tracked[PROBE].notna()].copy()
            mine["comparison"] = name
            mine["run"] = parts.loc[mine.index, "run"]
            mine["seed"] = parts.loc[mine.index, "seed"].astype(int)
            mine = mine.sort_values("start_time", ascending=False)
            frames.append(mine.drop_duplicates(["namespace", "checkpoint_key"]))
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(runs):
        runs.loc[runs["run"] == CONTROL, "temperature"] = math.nan  # it never trained
    return _run_columns_first(runs)


def _run_and_seed(comparison: str, namespace: str) -> tuple[str | None, int | None]:
    """The run and seed of ``namespace`` if it is one of ``comparison``'s, else Nones."""
    split = split_seed_namespace(namespace)
    if split is None or not split[0].startswith(f"{comparison}."):
        return None, None
    return split[0].removeprefix(f"{comparison}."), split[1]


def _temperature(run: str, entries: dict, recipe: dict) -> float:
    """A run's InfoNCE temperature as the parameter files set it: its own, else the shared
    recipe's; NaN for the control, which never trains, and for a run no longer configured."""
    if run == CONTROL or lookup(entries or {}, run) is None:
        return math.nan
    own = lookup(entries, f"{run}.pretraining.temperature")
    value = own if own is not None else lookup(recipe or {}, "temperature")
    return math.nan if value is None else float(value)


def catalog_runs(
    tables: dict[str, pd.DataFrame], settings: dict[str, dict], recipe: dict
) -> pd.DataFrame:
    """The rows of each comparison's per-seed table (``tables``, by comparison), with the
    ``comparison``, the run's ``namespace`` and its ``temperature`` in front: the table's own
    where it records one, else as the comparison's parameters (``settings``) or the shared
    ``pretraining`` recipe set it. The random_init control is kept here; whether it is
    ranked is :func:`chosen_runs`' choice."""
    frames = []
    for name, table in tables.items():
        frame = table.copy()
        frame["comparison"] = name
        pairs = zip(frame["run"], frame["seed"], strict=True)
        frame["namespace"] = [seed_namespace(name, run, int(seed)) for run, seed in pairs]
        temperature = pd.Series([_temperature(run, settings[name], recipe) for run in frame["run"]],
                                index=frame.index, dtype=float)  # fmt: skip
        if "temperature" in frame:  # a table that records it is believed first
            temperature = pd.to_numeric(frame["temperature"]).fillna(temperature)
        frame["temperature"] = temperature
        frames.append(frame)
    return _run_columns_first(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


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


def metric_report(
    runs: pd.DataFrame, notes: list[str], params: SelectionConfig
) -> tuple[pd.DataFrame, str, dict[str, plt.Figure]]:
    """Spearman's ρ of every label-free metric in ``runs`` with the linear-probe and kNN
    accuracies, over all runs and within each method (:func:`rank_metrics`); the table, its
    Markdown (with ``notes``), and one figure per metric of the metric against the
    linear-probe accuracy, coloured by method, ρ in the title and legend."""
    table = rank_metrics(runs, min_runs=params.min_runs, resamples=params.resamples,
                         level=params.level, seed=params.seed)  # fmt: skip
    notes = list(notes)
    if "comparison" in runs:
        notes.append(f"Runs of: {', '.join(dict.fromkeys(runs['comparison']))}.")
    notes.append(f"Bootstrap seed {params.seed}; ρ as scipy.stats.spearmanr (ties averaged).")
    markdown = selection_markdown(table, runs, notes, params.min_runs)
    figures = {}
    probe = table[table["accuracy"] == PROBE]
    for metric in metric_columns(runs.columns) if PROBE in runs else []:
        rows = probe[probe["metric"] == metric].set_index("group")
        overall = rho_text(rows.loc[ALL]) if ALL in rows.index else "–"
        labels = {group: f"{group}: {rho_text(row)}" for group, row in rows.iterrows()}
        figures[f"{metric}.png"] = metric_vs_accuracy_figure(
            runs, metric, PROBE,
            f"{metric} against {ACCURACIES[PROBE]}\nSpearman ρ over all runs: {overall} "
            f"({params.level:.0%} bootstrap interval)",
            labels=labels, annotate="temperature",
        )  # fmt: skip
    return table, markdown, figures


def ranking_summary(runs: pd.DataFrame, table: pd.DataFrame) -> str:
    """One line on :func:`metric_report`'s table, for the stage's log: the runs and metrics,
    and the three metrics with the largest |ρ| with the linear probe over all runs."""
    probe = table[table["accuracy"] == PROBE]
    ranked = probe[(probe["group"] == ALL) & (probe["status"] == OK)]
    best = ranked.reindex(ranked["rho"].abs().sort_values(ascending=False).index).head(3)
    return (
        f"selection: {len(runs)} runs, {len(metric_columns(runs.columns))} metrics; largest "
        f"|ρ| with the linear probe over all runs: "
        + (", ".join(f"{r['metric']} {r['rho']:+.2f}" for _, r in best.iterrows()) or "none")
    )
