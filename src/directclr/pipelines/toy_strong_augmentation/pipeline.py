from kedro.pipeline import Node, Pipeline

from .nodes import plot_noise_sweep, run_noise_sweep

NAME = "toy_strong_augmentation"
SWEEP_NODE = "run_noise_sweep"
PLOT_NODE = "plot_noise_sweep"


def create_pipeline(**kwargs) -> Pipeline:
    nodes = Pipeline(
        [
            Node(
                run_noise_sweep,
                inputs=f"params:{NAME}",
                outputs=[
                    "spectrum_history",
                    "theory_spectrum",
                    "collapse_prediction",
                    "summary",
                    "metrics",
                ],  # fmt: skip
                name=SWEEP_NODE,
            ),
            Node(
                plot_noise_sweep,
                inputs=["spectrum_history", "collapse_prediction", f"params:{NAME}"],
                outputs=[
                    "spectrum_history_figure",
                    "final_spectrum_figure",
                    "collapse_prediction_figure",
                ],  # fmt: skip
                name=PLOT_NODE,
            ),
        ],
        tags=NAME,
    )
    return Pipeline(nodes, namespace=NAME, parameters={f"params:{NAME}"})
