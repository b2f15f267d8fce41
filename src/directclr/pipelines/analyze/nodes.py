from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from directclr.checkpoint_import import (
    EncoderConfig,
    convert_checkpoint,
    fit_to_dataset,
    import_summary,
    small_images_warning,
)
from directclr.training import spectrum_history

logger = logging.getLogger(__name__)

# Where `kedro run --pipeline=analyze` keeps the encoder settings, to name them in messages.
SETTINGS = "analyze.encoder."


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
    warning = small_images_warning(report)
    if warning:
        logger.warning(warning)
    logger.info(import_summary(report))
    return model, spectrum_history([]), report
