from kedro.pipeline import Node, Pipeline

from .nodes import make_compare_runs, run_artifacts

REPORT_NODE = "compare_runs"


def create_pipeline(comparison: str, namespaces: dict[str, list[str]], **kwargs) -> Pipeline:
    """The report node of ``comparison``: ``namespaces`` maps each run to its namespaces, one
    per seed."""
    artifacts = {
        name: name
        for spaces in namespaces.values()
        for space in spaces
        for name in run_artifacts(space)
    }
    outputs = [
        f"{comparison}.{name}"
        for name in (
            "per_seed_table", "per_seed_markdown", "comparison_table", "comparison_markdown",
            "comparison_spectra_figure", "collapse_vs_d0_figure",
        )
    ]  # fmt: skip
    return Pipeline(
        [
            Node(
                make_compare_runs(comparison, namespaces),
                inputs={"reference": f"params:{comparison}.reference", **artifacts},
                outputs=outputs,
                name=REPORT_NODE,
                namespace=f"{comparison}.report",
            )
        ],
        tags="comparison",
    )
