from kedro.pipeline import Node, Pipeline

from .nodes import ARTIFACTS_PER_RUN, make_compare_runs


def create_pipeline(comparison: str, runs: list[str], **kwargs) -> Pipeline:
    """The report node of ``comparison`` over the namespaced ``runs``."""
    inputs = [f"{run}.{artifact}" for run in runs for artifact in ARTIFACTS_PER_RUN]
    outputs = [f"{comparison}.comparison_table", f"{comparison}.comparison_markdown",
               f"{comparison}.comparison_spectra_figure",
               f"{comparison}.collapse_vs_d0_figure"]  # fmt: skip
    return Pipeline(
        [
            Node(
                make_compare_runs(comparison, runs),
                inputs=inputs,
                outputs=outputs,
                name="compare_runs",
                namespace=f"{comparison}.report",
            )
        ],  # fmt: skip
        tags="comparison",
    )
