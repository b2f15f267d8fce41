from __future__ import annotations

import warnings

from kedro.pipeline import Node, Pipeline

from .nodes import make_gather_runs, rank_runs

NAMESPACE = "selection"
GATHER, RANK = "gather_runs", "rank_runs"
GATHER_NODE, RANK_NODE = f"{NAMESPACE}.{GATHER}", f"{NAMESPACE}.{RANK}"


def create_pipeline(comparisons: list[str], **kwargs) -> Pipeline:
    """Read the latest per-seed table of each of ``comparisons`` (the runs must have
    finished), then rank the label-free metrics by how well they predict accuracy."""
    per_comparison = {}
    for name in comparisons:
        per_comparison[f"{name}_table"] = f"{name}.per_seed_table"
        per_comparison[f"{name}_settings"] = f"params:{name}"
    with warnings.catch_warnings():
        # Kedro warns about inputs named in another namespace than the node's: reading the
        # comparisons' tables is this node's purpose.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        gather = Node(
            make_gather_runs(comparisons),
            inputs={
                "tracked": "selection.tracked_runs",
                "params": "params:selection",
                "recipe": "params:pretraining",
                **per_comparison,
            },
            outputs="selection.runs",
            name=GATHER,
            namespace=NAMESPACE,
        )
    rank = Node(
        rank_runs,
        inputs=["selection.runs", "params:selection"],
        outputs=["selection.metric_table", "selection.metric_markdown",
                 "selection.scatter_figures"],
        name=RANK,
        namespace=NAMESPACE,
    )  # fmt: skip
    return Pipeline([gather, rank], tags="selection")
