"""Side-by-side comparison of runs, with the paper's ImageNet numbers beside ours."""

from __future__ import annotations

import math

import pandas as pd

from directclr.projectors import uses_d0

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


def comparison_row(
    run: str, linear_eval: dict, spectrum: dict, history: pd.DataFrame
) -> dict[str, object]:
    """One table row: what a run scored, how collapsed it is, and how long it trained."""
    method = linear_eval.get("method")
    split = spectrum["split"]
    return {
        "run": run,
        "method": method,
        # Metrics written before d0 became per-method carry one for every method.
        "d0": linear_eval.get("d0") if uses_d0(method or "") else None,
        "linear_probe_top1_r": linear_eval["linear_probe_accuracy_r"],
        "linear_probe_top1_z": linear_eval["linear_probe_accuracy_z"],
        "knn_top1_r": linear_eval.get("knn_accuracy_r"),
        "spectrum_split": split,
        "effective_rank_r": spectrum[f"r_{split}"]["effective_rank"],
        "effective_rank_z": spectrum[f"z_{split}"]["effective_rank"],
        "collapsed_dims_r": spectrum[f"r_{split}"]["collapsed_dimensions"],
        "collapsed_dims_z": spectrum[f"z_{split}"]["collapsed_dimensions"],
        "structural_zeros_r": spectrum[f"r_{split}"]["structural_zeros"],
        "dims_r": spectrum[f"r_{split}"]["dimensions"],
        "dims_z": spectrum[f"z_{split}"]["dimensions"],
        "training_seconds": float(history["seconds"].sum()) if "seconds" in history else None,
        PAPER_COLUMN: PAPER_TOP1.get(method),
    }


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
    """Collapsed dimensions per kind of vectors (r, z, r[:d0], r[d0:]) on the comparison
    split, for a run that has a d0; empty for the others."""
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
