from __future__ import annotations

import logging

from directclr.data import DataConfig, prepare
from directclr.distributed import rank_zero_first

logger = logging.getLogger(__name__)


def prepare_dataset(params: DataConfig) -> tuple[dict, dict]:
    """Load the configured source, split it, and describe it in a dataset card.

    In-memory sources give uint8 image tensors; an image folder gives a manifest of paths.
    Under torchrun, work that writes shared files (a download, or an image folder's decoded
    cache) is done by rank 0 first while the other ranks wait; they then prepare from the
    files it wrote (the downloaded files, the complete cache): no two processes write the
    same file, and the folder is decoded once.
    """
    if params.download or (params.source == "image_folder" and params.cache):
        dataset, card = rank_zero_first(lambda: prepare(params))
    else:
        dataset, card = prepare(params)
    logger.info(
        "data_prep: %s -> dataset (%s; images %s, %d classes, %d files skipped)",
        card["source"], ", ".join(f"{n} {split}" for split, n in card["counts"].items()),
        "x".join(map(str, card["image_shape"])), len(card["classes"]), len(card["skipped_files"]),
    )  # fmt: skip
    return dataset, card
