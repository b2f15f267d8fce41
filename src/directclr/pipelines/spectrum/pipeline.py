from kedro.pipeline import Node, Pipeline

from .nodes import compute_spectrum

SPECTRUM_NODE = "compute_spectrum"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                compute_spectrum,
                inputs=["embeddings", "model", "spectrum_history", "params:spectrum"],
                outputs=[
                    "spectrum",
                    "spectrum_metrics",
                    "spectrum_figure",
                    "spectrum_history_figure",
                ],
                name=SPECTRUM_NODE,
            )
        ],
        tags="spectrum",
    )
