from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from directclr.batches import training_batches
from directclr.checkpoints import CheckpointStore
from directclr.models import model_artifact
from directclr.plots import training_history_figure
from directclr.tracking import RunRecorder
from directclr.training import pretrain, training_summary, validated_settings

logger = logging.getLogger(__name__)


def pretrain_model(
    dataset: dict,
    dataset_card: dict,
    checkpoints: CheckpointStore,
    settings: Any,
    tracking: RunRecorder | None = None,
) -> tuple[dict, pd.DataFrame, pd.DataFrame, plt.Figure]:
    """Train the run's method on the training split.

    ``settings`` are the run's (``params:<run>.pretraining``): before any node runs, the
    project's hook lays them over the shared ``pretraining`` recipe and validates them once
    (:class:`~directclr.framework.hooks.CheckRunBeforeWork`). They arrive as a
    :class:`~directclr.training.PretrainingConfig`; the hint is ``Any`` so that Kedro's own
    parameter validation leaves the run's partial settings alone.

    ``tracking`` is where the run's MLflow run is logged while it trains (the project's
    tracking hook hands it over; None when tracking is off).

    Returns the model artifact, the training history, the spectrum history and a figure of
    the history. Checkpoints go to the ``checkpoints`` store while training runs.
    """
    params = validated_settings(settings, "pretrain_model")
    source = training_batches(dataset, params.batch_size, params.seed, params.num_workers)
    model, history, spectra = pretrain(
        source,
        None,
        params,
        mean=dataset_card["channel_mean"],
        std=dataset_card["channel_std"],
        checkpoints=checkpoints,
        recorder=tracking,
    )
    logger.info(training_summary(params, source.num_images, history))
    figure = training_history_figure(history, f"{params.method}: training history")
    return model_artifact(model, params, source.channels), history, spectra, figure
