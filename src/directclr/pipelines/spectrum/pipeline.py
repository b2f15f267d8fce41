from kedro.pipeline import Node, Pipeline

from .nodes import compute_spectrum


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                compute_spectrum,
                inputs=["embeddings", "params:spectrum"],
                outputs=["spectrum", "spectrum_metrics", "spectrum_figure"],
                name="compute_spectrum",
            )
        ],
        tags="spectrum",
    )
