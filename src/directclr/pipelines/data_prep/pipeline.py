from kedro.pipeline import Node, Pipeline

from .nodes import prepare_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_dataset,
                inputs="params:data_prep",
                outputs=["dataset", "dataset_card"],
                name="prepare_dataset",
            )
        ],
        tags="data_prep",
    )
