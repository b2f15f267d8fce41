from kedro.pipeline import Node, Pipeline

from .nodes import initialise_model

INITIALISE_NODE = "initialise_model"


def create_pipeline(**kwargs) -> Pipeline:
    """In place of pretraining: the same outputs, from a model that never trained."""
    return Pipeline(
        [
            Node(
                initialise_model,
                inputs=["dataset", "dataset_card", "params:pretraining"],
                outputs=["model", "training_history", "spectrum_history"],
                name=INITIALISE_NODE,
            )
        ],
        tags="random_init",
    )
