from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from directclr.batches import training_batches
from directclr.models import model_artifact
from directclr.training import PretrainingConfig, random_init_model, spectrum_history

logger = logging.getLogger(__name__)


def initialise_model(
    dataset: dict, dataset_card: dict, settings: Any
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The control run's model: the run's architecture with weights drawn from its seed,
    never trained, its BatchNorm statistics re-estimated on the training images (see
    :func:`~directclr.training.random_init_model`). The history is empty: nothing trained.

    ``settings`` arrive validated from the project's hook, as for pretraining.
    """
    if not isinstance(settings, PretrainingConfig):
        raise TypeError(
            "initialise_model needs the run's validated settings; run it through the project's "
            "hooks (kedro run, or a KedroSession of this project)"
        )
    source = training_batches(dataset, settings.batch_size, settings.seed, settings.num_workers)
    model = random_init_model(
        source, settings, dataset_card["channel_mean"], dataset_card["channel_std"]
    )
    logger.info(
        "random_init: %s architecture, seed %d, never trained; BatchNorm statistics from %d "
        "training images",
        settings.method, settings.seed, source.num_images,
    )  # fmt: skip
    history = pd.DataFrame(columns=["epoch", "step", "loss", "seconds"])
    return model_artifact(model, settings, source.channels), history, spectrum_history([])
