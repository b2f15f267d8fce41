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
from directclr.training import PretrainingConfig, pretrain

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
    if not isinstance(settings, PretrainingConfig):
        raise TypeError(
            "pretrain_model needs the run's validated settings; run it through the project's "
            "hooks (kedro run, or a KedroSession of this project)"
        )
    params = settings
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
    last = history.iloc[-1]
    logger.info(
        "pretraining: %s on %d images, %d epochs -> model (final loss %.4f, online probe %.3f, "
        "effective rank r %.1f, z %.1f)",
        params.method,
        source.num_images,
        params.epochs,
        last["loss"],
        last["online_probe_accuracy"],
        last["effective_rank_r"],
        last["effective_rank_z"],
    )
    figure = training_history_figure(history, f"{params.method}: training history")
    return model_artifact(model, params, source.channels), history, spectra, figure
