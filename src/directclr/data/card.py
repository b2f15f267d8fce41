"""The dataset card: what a prepared dataset holds, where it came from, and its content hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from directclr.data.config import SPLITS, DataConfig


def content_hash(dataset: dict[str, Any]) -> str:
    """sha256 over the class names and every split's uint8 images and int64 labels."""
    digest = hashlib.sha256(json.dumps(dataset["classes"]).encode())
    for split in SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key in dataset:
                array = np.ascontiguousarray(dataset[key].numpy())
                digest.update(f"{key} {list(array.shape)} {array.dtype}\n".encode())
                digest.update(array.data)
    return f"sha256:{digest.hexdigest()}"


def check_content(dataset: dict[str, Any], card: dict[str, Any], name: str) -> None:
    """A ValueError naming ``name`` when a tensors dataset's content differs from the hash its
    card recorded when data_prep wrote both: the file changed since, and a run would train
    and measure on pixels nobody prepared. A manifest holds no pixels (its images are
    checked when decoded), and a card without a hash has nothing to compare."""
    if dataset.get("kind", "tensors") != "tensors" or not card.get("content_hash"):
        return
    found = content_hash(dataset)
    if found != card["content_hash"]:
        raise ValueError(
            f"{name} does not match its dataset card: its content hash is {found}, the card "
            f"says {card['content_hash']}, so the file changed after data_prep wrote it. Rerun "
            f"data_prep (kedro run --pipeline=data_prep) to prepare the dataset again"
        )


def _counts_per_class(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts, strict=True)}


def pretraining_images(card: dict[str, Any]) -> int:
    """How many images pretraining draws its batches from: the train split, plus STL-10's
    unlabeled split when the dataset has one (see :func:`directclr.batches.training_batches`)."""
    counts = card["counts"]
    return int(counts.get("train", 0)) + int(counts.get("unlabeled", 0))


def dataset_card(
    config: DataConfig,
    *,
    kind: str,
    split_labels: dict[str, np.ndarray],
    counts: dict[str, int],
    classes: list[str],
    image_shape: list[int],
    source_channels: Any,
    channel_mean: list[float],
    channel_std: list[float],
    digest: str,
    single_part: bool,
    skipped_files: list[dict] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The card of a prepared dataset, one shape for every source: settings, shape, classes,
    counts per split and per class (``split_labels``: the labelled splits), channel
    statistics, content hash and skipped files; ``extra`` adds what one kind alone has.
    ``single_part``: the source had no test split of its own and was split by
    ``test_fraction``."""
    card: dict[str, Any] = {"source": config.source, "kind": kind}
    if kind == "manifest" or not single_part:
        card["root"] = config.root
    card["seed"] = config.seed
    if single_part:
        card["test_fraction"] = config.test_fraction
    card |= {
        "val_fraction": config.val_fraction,
        "max_samples": config.max_samples,
        "image_shape": image_shape,
        "channels": image_shape[0],
        "source_channels": source_channels,
        "classes": classes,
        "counts": counts,
        "counts_per_class": {
            split: _counts_per_class(labels, classes) for split, labels in split_labels.items()
        },
        "channel_mean": channel_mean,
        "channel_std": channel_std,
        "content_hash": digest,
        "skipped_files": skipped_files or [],
    }
    return card | extra
