from __future__ import annotations

import logging

from directclr.data import DataConfig, prepare

logger = logging.getLogger(__name__)


def prepare_dataset(params: DataConfig) -> tuple[dict, dict]:
    """Load the configured source and split it into train and test."""
    dataset, card = prepare(params)
    logger.info(
        "data_prep: %s -> dataset (%d train, %d test, images %s, %d classes)",
        card["source"], card["counts"]["train"], card["counts"]["test"],
        "x".join(map(str, card["image_shape"])), len(card["classes"]),
    )  # fmt: skip
    return dataset, card
