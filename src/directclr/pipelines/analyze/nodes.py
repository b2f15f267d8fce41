from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from directclr.checkpoint_import import EncoderConfig, convert_checkpoint, fit_to_dataset
from directclr.training import spectrum_history

logger = logging.getLogger(__name__)

# Where `kedro run --pipeline=analyze` keeps the encoder settings, to name them in messages.
SETTINGS = "analyze.encoder."
SMALLEST_IMAGENET_INPUT = 32  # resnet50's ImageNet stem and stages downsample 32x


def convert_encoder(encoder_checkpoint: Any, params: EncoderConfig) -> tuple[dict, dict]:
    """The checkpoint as this project's model artifact, checked against the architecture in
    the parameters, and a report of what was read. A file that is not a checkpoint, or does
    not fit, stops the run here, before anything is saved."""
    return convert_checkpoint(encoder_checkpoint, params, SETTINGS)


def import_encoder(
    converted_model: dict, conversion_report: dict, dataset_card: dict
) -> tuple[dict, pd.DataFrame, dict]:
    """The converted model, checked against the dataset's channels (and normalised with its
    statistics when asked), as the run's ``model``; an empty spectrum history, since an
    imported encoder has no training to record; and the import report."""
    model, report = fit_to_dataset(converted_model, conversion_report, dataset_card)
    side = min(report["image_shape"][1:])
    if report["backbone"] == "resnet50" and side < SMALLEST_IMAGENET_INPUT:
        logger.warning(
            "import_encoder: resnet50 downsamples 32x and the images are %d px; its last feature "
            "maps are 1x1. Set data_prep.image_size (e.g. 224) for images like its training data",
            side,
        )
    set_aside = [f"dropped {', '.join(report['dropped_keys'])}"] if report["dropped_keys"] else []
    if report["unused_entries"]:
        set_aside.append(f"unused entries {', '.join(report['unused_entries'])}")
    if report.get("renamed_keys"):
        set_aside.append(f"backbone read as {report['renamed_keys']}")
    if report["weights"] != "the file's top level":
        set_aside.append(f"weights from {report['weights']}")
    if report["unreadable_entries"]:
        # Pickled objects (hyper-parameters and the like) that were not rebuilt: nothing of
        # them is used, and they were never run.
        set_aside.append(f"left unread: {', '.join(report['unreadable_entries'])}")
    logger.info(
        "import_encoder: %s checkpoint -> model (%s, r %d-d, %d channels; %s; normalisation %s)",
        report["layout"], report["backbone"], report["representation_dim"], report["in_channels"],
        "; ".join([report["embedding"], *set_aside]), report["normalization"]["source"],
    )  # fmt: skip
    return model, spectrum_history([]), report
