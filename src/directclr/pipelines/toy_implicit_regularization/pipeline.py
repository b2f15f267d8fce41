from kedro.pipeline import Node, Pipeline

from .nodes import plot_depth_sweep, run_depth_sweep

NAME = "toy_implicit_regularization"
SWEEP_NODE = "run_depth_sweep"
PLOT_NODE = "plot_depth_sweep"


def create_pipeline(**kwargs) -> Pipeline:
    nodes = Pipeline(
        [
            Node(
                run_depth_sweep,
                inputs=f"params:{NAME}",
                outputs=["spectrum_history", "singular_values", "alignment", "summary", "metrics"],
                name=SWEEP_NODE,
            ),
            Node(
                plot_depth_sweep,
                inputs=["spectrum_history", "alignment", "summary", f"params:{NAME}"],
                outputs=["spectrum_history_figure", "final_spectrum_figure", "alignment_figure"],
                name=PLOT_NODE,
            ),
        ],
        tags=NAME,
    )
    return Pipeline(nodes, namespace=NAME, parameters={f"params:{NAME}"})
