from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd

from directclr.batches import training_batches
from directclr.checkpoints import CheckpointStore
from directclr.plots import training_history_figure
from directclr.training import model_artifact, pretrain, run_config

logger = logging.getLogger(__name__)


def pretrain_model(
    dataset: dict, dataset_card: dict, checkpoints: CheckpointStore, recipe: dict, run: dict
) -> tuple[dict, pd.DataFrame, pd.DataFrame, plt.Figure]:
    """Train the run's method on the training split.

    ``recipe`` is the shared training recipe (``params:pretraining``) and ``run`` this run's
    changes to it (``params:<run>.pretraining``); the hooks validate both before any node runs.

    Returns the model artifact, the training history, the spectrum history and a figure of
    the history. Checkpoints go to the ``checkpoints`` store while training runs.
    """
    params = run_config(recipe, run)
    source = training_batches(dataset, params.batch_size, params.seed, params.num_workers)
    model, history, spectra = pretrain(
        source,
        None,
        params,
        mean=dataset_card["channel_mean"],
        std=dataset_card["channel_std"],
        checkpoints=checkpoints,
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
