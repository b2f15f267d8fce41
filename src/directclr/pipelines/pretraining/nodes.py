from __future__ import annotations

import logging

import pandas as pd

from directclr.training import PretrainingConfig, model_artifact, pretrain

logger = logging.getLogger(__name__)


def pretrain_model(
    dataset: dict, dataset_card: dict, params: PretrainingConfig
) -> tuple[dict, pd.DataFrame]:
    """Train the configured method on the training split; return the model and its history."""
    images = dataset["train_images"]
    model, history = pretrain(
        images,
        dataset["train_labels"],
        params,
        mean=dataset_card["channel_mean"],
        std=dataset_card["channel_std"],
    )
    last = history.iloc[-1]
    logger.info(
        "pretraining: %s on %d images, %d epochs -> model (final loss %.4f, online probe %.3f)",
        params.method, len(images), params.epochs, last["loss"], last["online_probe_accuracy"],
    )  # fmt: skip
    return model_artifact(model, params, images.shape[1]), history
