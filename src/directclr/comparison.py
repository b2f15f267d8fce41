"""Side-by-side comparison of runs over seeds, with the paper's ImageNet numbers beside ours.

Each run of a comparison is trained once per seed. :func:`comparison_row` is one run and
seed; :func:`summarise` gives, per run, the mean and standard deviation (ddof = 1) of each
metric over its seeds and, for the linear probe on r and the effective rank of r, the
paired difference from the reference run over the same seeds: its mean, its standard error
and whether the mean is more than two standard errors from zero. With few seeds (fewer than
:data:`CONCLUSIVE_SEEDS`) that test is marked indicative. :func:`compare` makes all of a
comparison's tables from its runs' artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
from pydantic import BaseModel

from directclr.projectors import HEAD, TAIL, uses_d0

# Linear-probe top-1 (%) from Jing et al. (ICLR 2022): ResNet-50, ImageNet, 100 epochs.
# Table 1 and Table 2; random_subset is the Appendix F control.
PAPER_TOP1 = {
    "simclr": 66.5,
    "simclr_linear": 61.1,
    "no_projector": 51.5,
    "orthogonal": 52.2,
    "diagonal": 60.2,
    "fixed_low_rank": 62.3,
    "directclr": 62.7,
    "random_subset": 43.0,
}
PAPER_COLUMN = "paper top-1 % (ImageNet, ResNet-50; directclr: d0=360)"
# Metrics summarised over seeds, and those compared with the reference seed by seed.
SUMMARISED = (
    "linear_probe_top1_r", "linear_probe_top1_z", "knn_top1_r", "linear_probe_top1_raw_pixels",
    "linear_probe_top1_r_head", "linear_probe_top1_r_tail",
    "effective_rank_r", "effective_rank_z", "effective_rank_r_head", "effective_rank_r_tail",
    "rankme_r", "rankme_z", "nesum_r", "nesum_z", "participation_ratio_r",
    "participation_ratio_z", "normalised_std_r", "normalised_std_z", "lidar_r", "lidar_z",
    "numerical_rank_r", "numerical_rank_z", "power_law_alpha_r", "power_law_alpha_z",
    "collapsed_dims_r", "collapsed_dims_z", "training_seconds",
)  # fmt: skip
# The label-free measures every row carries for r and z (spectrum_metrics' names).
LABEL_FREE = ("rankme", "nesum", "participation_ratio", "normalised_std", "lidar",
              "numerical_rank", "power_law_alpha")  # fmt: skip
PAIRED = ("linear_probe_top1_r", "effective_rank_r")
CONCLUSIVE_SEEDS = 5
# The control run of every comparison: the default method's architecture, never trained.
CONTROL = "random_init"


_SEED = ".seed_"


def seed_namespace(comparison: str, run: str, seed: int) -> str:
    """The namespace of one run of a comparison with one seed: ``compare.simclr.seed_0``."""
    return f"{comparison}.{run}{_SEED}{seed}"


def split_seed_namespace(namespace: str) -> tuple[str, int] | None:
    """The inverse of :func:`seed_namespace`: ``("compare.simclr", 0)`` for
    ``compare.simclr.seed_0``; None for a namespace of no seed (``directclr``)."""
    head, found, seed = namespace.rpartition(_SEED)
    if not found or not head or not seed.isdigit():
        return None
    return head, int(seed)


def lookup(params: dict[str, Any], dotted: str) -> Any:
    """``params["a"]["b"]`` for ``"a.b"``; None where the path does not exist. Sections
    that Kedro has already turned into typed settings are read the same way."""
    value: Any = params
    for part in dotted.split("."):
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def comparison_row(
    run: str, linear_eval: dict, spectrum: dict, history: pd.DataFrame, seed: int | None = None
) -> dict[str, object]:
    """One table row: what a run scored with one seed, how collapsed it is, and how long it
    trained."""
    method = linear_eval.get("method")
    split = spectrum["split"]
    seconds = history["seconds"].astype(float).sum() if "seconds" in history else None
    probes = linear_eval.get("probes", {})
    return {
        "run": run,
        "seed": seed,
        "method": method,
        # Metrics written before d0 became per-method carry one for every method.
        "d0": linear_eval.get("d0") if uses_d0(method or "") else None,
        "linear_probe_top1_r": linear_eval["linear_probe_accuracy_r"],
        "linear_probe_top1_z": linear_eval["linear_probe_accuracy_z"],
        "knn_top1_r": linear_eval.get("knn_accuracy_r"),
        "linear_probe_top1_raw_pixels": linear_eval.get("linear_probe_accuracy_raw_pixels"),
        # For DirectCLR's architecture (the control's too): r's two parts, head and tail.
        "linear_probe_top1_r_head": probes.get(HEAD, {}).get("top1"),
        "linear_probe_top1_r_tail": probes.get(TAIL, {}).get("top1"),
        "effective_rank_r_head": spectrum.get(f"{HEAD}_{split}", {}).get("effective_rank"),
        "effective_rank_r_tail": spectrum.get(f"{TAIL}_{split}", {}).get("effective_rank"),
        "spectrum_split": split,
        "effective_rank_r": spectrum[f"r_{split}"]["effective_rank"],
        "effective_rank_z": spectrum[f"z_{split}"]["effective_rank"],
        # The label-free measures of r and z (LiDAR: of augmented views of training images,
        # whatever the split).
        **{
            f"{metric}_{kind}": spectrum[f"{kind}_{split}"].get(metric)
            for metric in LABEL_FREE
            for kind in ("r", "z")
        },
        "collapsed_dims_r": spectrum[f"r_{split}"]["collapsed_dimensions"],
        "collapsed_dims_z": spectrum[f"z_{split}"]["collapsed_dimensions"],
        "structural_zeros_r": spectrum[f"r_{split}"]["structural_zeros"],
        "dims_r": spectrum[f"r_{split}"]["dimensions"],
        "dims_z": spectrum[f"z_{split}"]["dimensions"],
        "training_seconds": None if seconds is None else float(seconds),
        PAPER_COLUMN: None if run == CONTROL else PAPER_TOP1.get(method),
    }


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summarise(per_seed: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per run (in first-seen order): mean and std (ddof = 1) over its seeds of
    :data:`SUMMARISED`, and for :data:`PAIRED` the difference from ``reference`` paired by
    seed: ``<metric>_diff_mean``, ``<metric>_diff_se`` (std / sqrt(n)) and
    ``<metric>_beyond_2se`` (|mean| > 2 se; ``None`` with fewer than two pairs)."""
    ref = per_seed[per_seed["run"] == reference].set_index("seed")
    rows = []
    for run, group in per_seed.groupby("run", sort=False):
        first = group.iloc[0]
        row: dict[str, object] = {
            "run": run, "method": first["method"], "d0": first["d0"], "seeds": len(group),
            "spectrum_split": first["spectrum_split"], "dims_r": first["dims_r"],
            "dims_z": first["dims_z"], "structural_zeros_r": first["structural_zeros_r"],
        }  # fmt: skip
        for metric in SUMMARISED:  # a table written before a metric existed: NaN
            values = pd.to_numeric(group.get(metric, pd.Series(math.nan, group.index)),
                                   errors="coerce")  # fmt: skip
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        pairs = 0
        for metric in PAIRED:
            mine = group.set_index("seed")[metric].astype(float)
            paired = (mine - ref[metric].astype(float)).dropna()
            pairs = len(paired)
            if run == reference:
                mean = se = math.nan
                beyond = None
            else:
                mean = paired.mean() if pairs else math.nan
                se = paired.std(ddof=1) / math.sqrt(pairs) if pairs > 1 else math.nan
                beyond = None if pairs < 2 else bool(abs(mean) > 2 * se)
            row[f"{metric}_diff_mean"] = mean
            row[f"{metric}_diff_se"] = se
            row[f"{metric}_beyond_2se"] = beyond
        row["paired_seeds"] = 0 if run == reference else pairs
        row[PAPER_COLUMN] = first[PAPER_COLUMN]
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, reference: str) -> str:
    """The summary as a readable Markdown table: mean ± std over seeds, and the paired
    differences from ``reference`` with a mark where they exceed two standard errors."""

    def pm(row: pd.Series, metric: str, digits: int) -> str:
        mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
        if _missing(mean):
            return "–"
        spread = "" if _missing(std) else f" ± {std:.{digits}f}"
        return f"{mean:.{digits}f}{spread}"

    def diff(row: pd.Series, metric: str, digits: int) -> str:
        if row["run"] == reference:
            return "reference"
        mean, se = row[f"{metric}_diff_mean"], row[f"{metric}_diff_se"]
        beyond = row[f"{metric}_beyond_2se"]
        if _missing(mean):
            return "–"
        mark = "" if _missing(beyond) else (" (> 2 SE)" if beyond else " (within 2 SE)")
        se_text = "" if _missing(se) else f" ± {se:.{digits}f}"
        return f"{mean:+.{digits}f}{se_text}{mark}"

    def parts(row: pd.Series, metric: str, digits: int) -> str:
        head, tail = pm(row, f"{metric}_head", digits), pm(row, f"{metric}_tail", digits)
        return "–" if head == tail == "–" else f"{head} / {tail}"

    columns = ["run", "seeds", "linear probe r", "linear probe z", "kNN r", "effective rank r",
               "collapsed dims r", f"Δ probe r vs {reference}", f"Δ eff. rank r vs {reference}",
               f"probe {HEAD} / {TAIL}", f"eff. rank {HEAD} / {TAIL}",
               "paper top-1 %"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in summary.iterrows():
        paper = row[PAPER_COLUMN]
        cells = [
            f"{row['run']}", f"{row['seeds']}", pm(row, "linear_probe_top1_r", 4),
            pm(row, "linear_probe_top1_z", 4), pm(row, "knn_top1_r", 4),
            pm(row, "effective_rank_r", 1), pm(row, "collapsed_dims_r", 1),
            diff(row, "linear_probe_top1_r", 4), diff(row, "effective_rank_r", 1),
            parts(row, "linear_probe_top1_r", 4), parts(row, "effective_rank_r", 1),
            "–" if _missing(paper) else f"{paper:g}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    split = summary["spectrum_split"].iloc[0] if len(summary) else "?"
    notes = [
        "",
        f"Mean ± std (ddof = 1) over {seeds} seeds; ranks and collapse on the {split} split; "
        f"Δ: the difference from {reference} paired by seed, ± its standard error.",
        f"Raw pixels (no model) probe at {pm(summary.iloc[0], 'linear_probe_top1_raw_pixels', 4)}."
        if len(summary)
        else "",
    ]
    if seeds < CONCLUSIVE_SEEDS:
        notes.append(f"With {seeds} seeds the 2-SE marks are indicative only.")
    return "\n".join(lines + notes) + "\n"


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *body]) + "\n"


def collapse_by_d0(run: str, spectrum: dict) -> pd.DataFrame:
    """Collapsed dimensions per kind of vectors (r, z, and r's two parts :data:`HEAD` and
    :data:`TAIL`) on the comparison split, for a run that has a d0; empty for the others."""
    if not uses_d0(spectrum.get("method", "")):
        return pd.DataFrame(columns=["run", "d0", "vectors", "collapsed_dimensions"])
    suffix = f"_{spectrum['split']}"
    return pd.DataFrame(
        [
            {"run": run, "d0": spectrum["d0"], "vectors": key.removesuffix(suffix),
             "collapsed_dimensions": value["collapsed_dimensions"]}
            for key, value in spectrum.items()
            if key.endswith(suffix) and isinstance(value, dict)
        ]
    )  # fmt: skip


def compare(
    runs: Iterable[tuple[str, int, dict, dict, pd.DataFrame, pd.DataFrame]], reference: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A comparison's tables from what each of its runs wrote with each seed: ``runs`` holds
    (run, seed, linear_eval metrics, spectrum metrics, spectrum table, training history).
    Returns the per-seed table (:func:`comparison_row`), its summary over seeds against
    ``reference`` (:func:`summarise`), every spectrum with its ``run`` and ``seed``, and the
    trained runs' collapse against d0 (:func:`collapse_by_d0`; the untrained control is
    left out, collapse against d0 being a question about training)."""
    rows, spectra, collapse = [], [], []
    for run, seed, linear_eval, spectrum_metrics, spectrum, history in runs:
        rows.append(comparison_row(run, linear_eval, spectrum_metrics, history, seed))
        spectra.append(spectrum.assign(run=run, seed=seed))
        if run != CONTROL:
            collapse.append(collapse_by_d0(run, spectrum_metrics).assign(seed=seed))
    per_seed = pd.DataFrame(rows)
    by_d0 = pd.concat(collapse, ignore_index=True) if collapse else collapse_by_d0("", {})
    return per_seed, summarise(per_seed, reference), pd.concat(spectra, ignore_index=True), by_d0


def comparison_summary(comparison: str, per_seed: pd.DataFrame, summary: pd.DataFrame) -> str:
    """One line for the log: how many runs and seeds ``comparison`` compared, and each run's
    linear-probe top-1 on r, mean over its seeds."""
    runs = len(summary)
    means = ", ".join(f"{row['run']} {row['linear_probe_top1_r_mean']:.4f}"
                      for _, row in summary.iterrows())  # fmt: skip
    return (
        f"comparison {comparison}: {runs} runs x {len(per_seed) // max(runs, 1)} seeds -> table "
        f"(linear-probe top-1 on r, mean over seeds: {means})"
    )
