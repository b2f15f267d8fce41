from kedro.pipeline import Node, Pipeline

from .nodes import convert_encoder, import_encoder

CONVERT_NODE = "convert_encoder"
IMPORT_NODE = "import_encoder"


def create_pipeline(**kwargs) -> Pipeline:
    """Checkpoint in; the run's ``model``, an empty ``spectrum_history`` and the
    ``encoder_import`` report out. ``convert_encoder`` needs no data, so the runner starts
    with it (nodes that are ready together run in name order, and ``analyze.`` comes before
    ``data_prep.``): a file that does not fit stops the run before any work is done."""
    return Pipeline(
        [
            Node(
                convert_encoder,
                inputs=["encoder_checkpoint", "params:encoder"],
                outputs=["converted_model", "conversion_report"],
                name=CONVERT_NODE,
            ),
            Node(
                import_encoder,
                inputs=["converted_model", "conversion_report", "dataset_card"],
                outputs=["model", "spectrum_history", "encoder_import"],
                name=IMPORT_NODE,
            ),
        ],
        tags="import_encoder",
    )
