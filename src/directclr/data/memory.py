"""In-memory sources: scikit-learn's digits and torchvision's CIFAR-10/100, STL-10, MNIST,
Fashion-MNIST and SVHN, split into uint8 tensors.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits

from directclr.data.card import content_hash, dataset_card
from directclr.data.config import TORCHVISION_SOURCES, DataConfig, split_indices
from directclr.data.pixels import channel_stats, resize, to_channels
from directclr.errors import CorruptFileError, MissingFileError

# STL-10's classes, for a copy of the binaries without class_names.txt beside them.
STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]


def _torchvision_class(source: str) -> type:
    from torchvision import datasets

    return {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "stl10": datasets.STL10,
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "svhn": datasets.SVHN,
    }[source]


def expected_files(source: str) -> list[str]:
    """The files torchvision reads for ``source``, relative to ``root``, in its own layout."""
    cls = _torchvision_class(source)
    if source in ("cifar10", "cifar100"):
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{name}" for name in names]
    if source == "stl10":
        return [f"{cls.base_folder}/{name}" for name, _ in cls.train_list + cls.test_list]
    if source == "svhn":
        return [cls.split_list[split][1] for split in ("train", "test")]
    return [f"{cls.__name__}/raw/{os.path.splitext(name)[0]}" for name, _ in cls.resources]


# What torchvision's readers raise on a damaged file: a failed md5 check (RuntimeError), a
# bare assertion on MNIST's idx header, a short or misshapen array, an unreadable pickle.
UNREADABLE = (RuntimeError, OSError, AssertionError, ValueError, EOFError, pickle.PickleError)
CHECKED_BY = {
    "cifar10": "torchvision checks their md5",
    "cifar100": "torchvision checks their md5",
    "stl10": "torchvision checks their md5",
    "svhn": "torchvision checks their md5",
    "mnist": "torchvision reads their idx headers; it has no md5 of the raw files",
    "fashion_mnist": "torchvision reads their idx headers; it has no md5 of the raw files",
}


def _unreadable_raw_files(source: str, root: Path) -> list[str]:
    """Which of MNIST's (or Fashion-MNIST's) raw idx files torchvision cannot read, read one by
    one; empty for the other sources, whose reader does not tell the files apart."""
    if source not in ("mnist", "fashion_mnist"):
        return []
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    unreadable = []
    for name in expected_files(source):
        try:
            read_sn3_pascalvincent_tensor(str(root / name), strict=False)
        except UNREADABLE:
            unreadable.append(name)
    return unreadable


def _torchvision_parts(config: DataConfig) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list]:
    """A torchvision source's official splits as uint8 (N, C, H, W) arrays and labels."""
    source, root, download = config.source, Path(config.root), config.download
    expected = expected_files(source)
    missing = [name for name in expected if not (root / name).is_file()]
    if missing and not download:
        raise MissingFileError(
            f"{source}: root={root} lacks {len(missing)} of the {len(expected)} files "
            f"torchvision reads: {', '.join(missing)}. Set data_prep.download=true to fetch them "
            f"(needs network), or put them under {root} in torchvision's layout (or point "
            f"data_prep.root at the folder that holds them)."
        )
    cls = _torchvision_class(source)
    try:
        if source in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
            sets = {s: cls(root, train=s == "train", download=download) for s in ("train", "test")}
        elif source == "stl10":
            sets = {
                s: cls(root, split=s, download=download) for s in ("train", "test", "unlabeled")
            }
        else:
            sets = {s: cls(root, split=s, download=download) for s in ("train", "test")}
    except UNREADABLE as err:
        reason = f"{err.__class__.__name__}: {err}" if str(err) else err.__class__.__name__
        if missing:
            raise RuntimeError(
                f"{source}: downloading into root={root} failed ({reason}). Without network, "
                f"put {', '.join(expected)} under {root} yourself (torchvision's layout)."
            ) from err
        corrupt = _unreadable_raw_files(source, root) or expected
        raise CorruptFileError(
            f"{source}: the files under root={root} are there but torchvision cannot read them "
            f"({reason}); they are corrupt or incomplete ({CHECKED_BY[source]}). "
            f"Delete {', '.join(corrupt)} and set data_prep.download=true, or replace them."
        ) from err

    parts = {}
    for split, ds in sets.items():
        if source in ("cifar10", "cifar100"):
            images, labels = ds.data.transpose(0, 3, 1, 2), ds.targets
        elif source in ("mnist", "fashion_mnist"):
            images, labels = ds.data.numpy()[:, None], ds.targets.numpy()
        else:
            images, labels = ds.data, ds.labels
        if len(images) != len(labels):
            raise CorruptFileError(
                f"{source}: the {split} files under root={root} hold {len(images)} images but "
                f"{len(labels)} labels; one is incomplete. Delete {', '.join(expected)} and set "
                f"data_prep.download=true, or replace them."
            )
        parts[split] = (np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64))
    if source == "stl10":
        classes = list(getattr(sets["train"], "classes", STL10_CLASSES))
    elif source == "svhn":
        classes = [str(digit) for digit in range(10)]
    else:
        classes = list(sets["train"].classes)
    return parts, classes


def load_source(config: DataConfig) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list]:
    """The source's parts as uint8 (N, C, H, W) images with int64 labels, and class names.

    Parts are ``all`` for digits (split later by ``test_fraction``), else the source's own
    ``train``, ``test`` and, for STL-10, ``unlabeled`` (labels -1).
    """
    if config.source == "digits":
        digits = load_digits()
        # Pixel values are 0..16; stretch them to the full uint8 range.
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        labels = digits.target.astype(np.int64)
        return {"all": (images, labels)}, [str(c) for c in digits.target_names]
    if config.source in TORCHVISION_SOURCES:
        return _torchvision_parts(config)
    raise ValueError(f"{config.source} is not an in-memory source; use prepare()")


def prepare_in_memory(config: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """digits or a torchvision source: split uint8 tensors, their indices, and the card."""
    parts, classes = load_source(config)
    splits = split_indices({part: labels for part, (_, labels) in parts.items()}, config)
    source_channels = next(iter(parts.values()))[0].shape[1]
    channels = source_channels if config.channels == "auto" else config.channels
    dataset: dict[str, Any] = {"kind": "tensors", "source": config.source, "classes": classes}
    for split, (part, rows) in splits.items():
        images = to_channels(torch.from_numpy(parts[part][0][rows]), channels)
        if config.image_size is not None:
            images = resize(images, config.image_size)
        dataset[f"{split}_images"] = images
        if split != "unlabeled":
            dataset[f"{split}_labels"] = torch.from_numpy(parts[part][1][rows])
        dataset[f"{split}_indices"] = torch.from_numpy(rows.astype(np.int64))

    mean, std = channel_stats(dataset["train_images"])
    card = dataset_card(
        config,
        kind="tensors",
        split_labels={
            split: dataset[f"{split}_labels"].numpy() for split in splits if split != "unlabeled"
        },
        counts={split: len(rows) for split, (_, rows) in splits.items()},
        classes=classes,
        image_shape=list(dataset["train_images"].shape[1:]),
        source_channels=int(source_channels),
        channel_mean=mean,
        channel_std=std,
        digest=content_hash(dataset),
        single_part="all" in parts,
    )
    return dataset, card
