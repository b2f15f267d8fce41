from kedro.pipeline import Node, Pipeline

from .nodes import pretrain_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                pretrain_model,
                inputs=["dataset", "dataset_card", "params:pretraining"],
                outputs=["model", "training_history"],
                name="pretrain_model",
            )
        ],
        tags="pretraining",
    )
