from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from directclr.batches import training_batches
from directclr.models import model_artifact
from directclr.training import (
    control_summary,
    random_init_model,
    spectrum_history,
    untrained_history,
    validated_settings,
)

logger = logging.getLogger(__name__)


def initialise_model(
    dataset: dict, dataset_card: dict, settings: Any
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The control run's model: the run's architecture with weights drawn from its seed,
    never trained, its BatchNorm statistics re-estimated on the training images (see
    :func:`~directclr.training.random_init_model`). The history is empty: nothing trained.

    ``settings`` arrive validated from the project's hook, as for pretraining.
    """
    params = validated_settings(settings, "initialise_model")
    source = training_batches(dataset, params.batch_size, params.seed, params.num_workers)
    model = random_init_model(
        source, params, dataset_card["channel_mean"], dataset_card["channel_std"]
    )
    logger.info(control_summary(params, source.num_images))
    history, spectra = untrained_history(), spectrum_history([])
    return model_artifact(model, params, source.channels), history, spectra
