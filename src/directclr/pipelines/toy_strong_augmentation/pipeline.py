from kedro.pipeline import Node, Pipeline

from .nodes import plot_noise_sweep, run_noise_sweep

NAME = "toy_strong_augmentation"


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
                name="run_noise_sweep",
            ),
            Node(
                plot_noise_sweep,
                inputs=["spectrum_history", "collapse_prediction"],
                outputs=[
                    "spectrum_history_figure",
                    "final_spectrum_figure",
                    "collapse_prediction_figure",
                ],  # fmt: skip
                name="plot_noise_sweep",
            ),
        ],
        tags=NAME,
    )
    return Pipeline(nodes, namespace=NAME, parameters={f"params:{NAME}"})
