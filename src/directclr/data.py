"""Image sources, split into train and test as uint8 tensors with labels."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class DataConfig(BaseModel):
    """Which images to use and how to split them."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["digits"] = "digits"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


def load_source(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images as uint8 (N, C, H, W), integer labels, and class names."""
    if source == "digits":
        digits = load_digits()
        # Pixel values are 0..16; stretch them to the full uint8 range.
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        return images, digits.target.astype(np.int64), [str(c) for c in digits.target_names]
    raise ValueError(f"unknown source {source!r}; choose digits")


def prepare(config: DataConfig) -> tuple[dict[str, torch.Tensor | list], dict]:
    """A stratified train/test split and the dataset card that describes it."""
    images, labels, classes = load_source(config.source)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=config.test_fraction,
        random_state=config.seed,
        stratify=labels,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    dataset = {
        "train_images": torch.from_numpy(images[train_idx]),
        "train_labels": torch.from_numpy(labels[train_idx]),
        "test_images": torch.from_numpy(images[test_idx]),
        "test_labels": torch.from_numpy(labels[test_idx]),
        "classes": classes,
    }
    train = images[train_idx].astype(np.float64) / 255
    card = {
        "source": config.source,
        "seed": config.seed,
        "test_fraction": config.test_fraction,
        "image_shape": list(images.shape[1:]),
        "classes": classes,
        "counts": {"train": int(len(train_idx)), "test": int(len(test_idx))},
        "counts_per_class": {
            split: {c: int((labels[idx] == i).sum()) for i, c in enumerate(classes)}
            for split, idx in (("train", train_idx), ("test", test_idx))
        },
        "channel_mean": train.mean(axis=(0, 2, 3)).tolist(),
        "channel_std": train.std(axis=(0, 2, 3)).tolist(),
    }
    return dataset, card
