from __future__ import annotations

import logging

from directclr import export
from directclr.export import EmbeddingsConfig

logger = logging.getLogger(__name__)


def export_embeddings(model: dict, dataset: dict, params: EmbeddingsConfig) -> dict:
    """r and z of every labelled split with the frozen model, and the augmented views LiDAR
    is measured on (:func:`directclr.export.export_embeddings`)."""
    embeddings = export.export_embeddings(model, dataset, params)
    logger.info(export.export_summary(embeddings))
    return embeddings
