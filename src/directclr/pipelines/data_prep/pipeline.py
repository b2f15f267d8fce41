from kedro.pipeline import Node, Pipeline

from .nodes import prepare_dataset

PREPARE_NODE = "prepare_dataset"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_dataset,
                inputs="params:data_prep",
                outputs=["dataset", "dataset_card"],
                name=PREPARE_NODE,
            )
        ],
        tags="data_prep",
    )
