from kedro.pipeline import Node, Pipeline

from .nodes import export_embeddings

EXPORT_NODE = "export_embeddings"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_embeddings,
                inputs=["model", "dataset", "params:embeddings"],
                outputs="embeddings",
                name=EXPORT_NODE,
            )
        ],
        tags="embeddings",
    )
