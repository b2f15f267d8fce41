from __future__ import annotations

import logging

from directclr.data import DataConfig, prepare
from directclr.distributed import rank_zero_first

logger = logging.getLogger(__name__)


def prepare_dataset(params: DataConfig) -> tuple[dict, dict]:
    """Load the configured source, split it, and describe it in a dataset card.

    In-memory sources give uint8 image tensors; an image folder gives a manifest of paths.
    Under torchrun with ``download: true``, rank 0 downloads (and prepares) first and the
    other ranks wait for it, then prepare from the files it wrote: no two processes write
    the same file.
    """
    if params.download:
        dataset, card = rank_zero_first(lambda: prepare(params))
    else:
        dataset, card = prepare(params)
    logger.info(
        "data_prep: %s -> dataset (%s; images %s, %d classes, %d files skipped)",
        card["source"], ", ".join(f"{n} {split}" for split, n in card["counts"].items()),
        "x".join(map(str, card["image_shape"])), len(card["classes"]), len(card["skipped_files"]),
    )  # fmt: skip
    return dataset, card
