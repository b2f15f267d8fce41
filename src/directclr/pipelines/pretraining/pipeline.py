from kedro.pipeline import Node, Pipeline

from .nodes import pretrain_model

PRETRAIN_NODE = "pretrain_model"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                pretrain_model,
                inputs=[
                    "dataset",
                    "dataset_card",
                    "checkpoints",
                    "params:pretraining",
                    "tracking",
                ],
                outputs=[
                    "model",
                    "training_history",
                    "spectrum_history",
                    "training_history_figure",
                ],
                name=PRETRAIN_NODE,
            )  # fmt: skip
        ],
        tags="pretraining",
    )
