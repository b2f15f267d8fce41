"""Image sources, split into train / val / test, validated and described by a dataset card.

Two kinds of dataset artifact come out of :func:`prepare`:

* **tensors** (scikit-learn digits; torchvision's CIFAR-10/100, STL-10, MNIST, Fashion-MNIST,
  SVHN): uint8 images (N, C, H, W) and int64 labels per split, held in memory, because small
  images train fastest as one tensor on the training device.
* **manifest** (``image_folder``, the user's own images in class sub-folders): paths relative
  to ``root`` and labels per split. Images are read batch by batch (:func:`iterate_batches`)
  from the decoded-image cache data_prep keeps (:mod:`.cache`), or decoded lazily in
  DataLoader workers without it, so a folder never has to fit in memory; :func:`materialize`
  reads one split into a tensor when it is small enough.

Both are plain dicts of tensors, lists, strings and numbers, so they load with
``torch.load(weights_only=True)``. Every split is stratified and deterministic by seed.

The package is split by idea: :mod:`.config` (settings and splits), :mod:`.memory` (in-memory
sources), :mod:`.folder` (scanning an image folder), :mod:`.cache` (its decoded images),
:mod:`.pixels` (decoding and pixel operations), :mod:`.card` (the dataset card) and
:mod:`.reading` (reading a dataset back).
"""

from __future__ import annotations

from typing import Any

from directclr.data.card import content_hash, dataset_card, pretraining_images
from directclr.data.config import (
    DEFAULT_FOLDER_IMAGE_SIZE,
    IMAGE_EXTENSIONS,
    SPLITS,
    TORCHVISION_SOURCES,
    DataConfig,
    Source,
    split_indices,
    stratified_split,
    stratified_subset,
)
from directclr.data.folder import prepare_image_folder, scan_layout
from directclr.data.memory import expected_files, load_source, prepare_in_memory
from directclr.data.pixels import channel_stats, decode_image, resize, to_channels
from directclr.data.reading import ImageFolderSplit, iterate_batches, materialize


def prepare(config: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dataset artifact for ``config.source`` and the dataset card that describes it.

    A dataset whose training split has fewer than two classes is refused: linear evaluation
    could not run on it, and would only say so after pretraining.
    """
    if config.source == "image_folder":
        dataset, card = prepare_image_folder(config)
    else:
        dataset, card = prepare_in_memory(config)
    present = [name for name, n in card["counts_per_class"]["train"].items() if n > 0]
    if len(present) < 2:
        raise ValueError(
            f"{config.source}: the training split has {len(present)} class(es) "
            f"({', '.join(present) or 'none'}); the linear probe needs at least two. Raise "
            f"data_prep.max_samples or use data with more classes"
        )
    return dataset, card


__all__ = [
    "DEFAULT_FOLDER_IMAGE_SIZE", "IMAGE_EXTENSIONS", "SPLITS", "TORCHVISION_SOURCES",
    "DataConfig", "ImageFolderSplit", "Source", "channel_stats", "content_hash", "dataset_card",
    "decode_image", "expected_files", "iterate_batches", "load_source", "materialize",
    "prepare", "prepare_image_folder", "prepare_in_memory", "pretraining_images", "resize",
    "scan_layout", "split_indices", "stratified_split", "stratified_subset", "to_channels",
]  # fmt: skip
