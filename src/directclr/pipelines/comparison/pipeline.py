from kedro.pipeline import Node, Pipeline

from .nodes import ARTIFACTS_PER_RUN, make_compare_runs


def create_pipeline(comparison: str, namespaces: dict[str, list[str]], **kwargs) -> Pipeline:
    """The report node of ``comparison``: ``namespaces`` maps each run to its namespaces, one
    per seed."""
    inputs = [
        f"{space}.{artifact}"
        for spaces in namespaces.values()
        for space in spaces
        for artifact in ARTIFACTS_PER_RUN
    ]
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
                inputs=[*inputs, f"params:{comparison}.reference"],
                outputs=outputs,
                name="compare_runs",
                namespace=f"{comparison}.report",
            )
        ],
        tags="comparison",
    )
