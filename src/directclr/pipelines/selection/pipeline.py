from __future__ import annotations

import warnings

from kedro.pipeline import Node, Pipeline

from .nodes import make_gather_runs, rank_runs

GATHER_NODE = "selection.gather_runs"


def create_pipeline(comparisons: list[str], **kwargs) -> Pipeline:
    """Read the latest per-seed table of each of ``comparisons`` (the runs must have
    finished), then rank the label-free metrics by how well they predict accuracy."""
    tables = [f"{name}.per_seed_table" for name in comparisons]
    settings = [f"params:{name}" for name in comparisons]
    with warnings.catch_warnings():
        # Kedro warns about inputs named in another namespace than the node's: reading the
        # comparisons' tables is this node's purpose.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        gather = Node(
            make_gather_runs(comparisons),
            inputs=[
                *tables,
                "selection.tracked_runs",
                "params:selection",
                "params:pretraining",
                *settings,
            ],  # fmt: skip
            outputs="selection.runs",
            name="gather_runs",
            namespace="selection",
        )
    rank = Node(
        rank_runs,
        inputs=["selection.runs", "params:selection"],
        outputs=["selection.metric_table", "selection.metric_markdown",
                 "selection.scatter_figures"],
        name="rank_runs",
        namespace="selection",
    )  # fmt: skip
    return Pipeline([gather, rank], tags="selection")
