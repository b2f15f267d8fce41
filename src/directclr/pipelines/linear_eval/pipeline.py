from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_linear_probe

PROBE_NODE = "evaluate_linear_probe"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_linear_probe,
                inputs=["embeddings", "model", "dataset", "spectrum_metrics", "params:linear_eval"],
                outputs=["linear_eval_metrics", "confusion_matrix_figure"],
                name=PROBE_NODE,
            )
        ],
        tags="linear_eval",
    )
