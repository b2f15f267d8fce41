"""What data_prep is asked for, and how a source is cut into train / val / test.

Every split is stratified by class and deterministic by seed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.model_selection import train_test_split

from directclr.devices import WorkersSetting

Source = Literal[
    "digits", "cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "svhn", "image_folder"
]
TORCHVISION_SOURCES = ("cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "svhn")
SPLITS = ("train", "val", "test", "unlabeled")
# The extensions torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_IMAGE_SIZE = 64


class DataConfig(BaseModel):
    """Which images to use, how to split them, and the shape they are brought to."""

    model_config = ConfigDict(extra="forbid")

    source: Source = "digits"
    root: str = Field(
        "data/01_raw",
        description="folder holding a torchvision source's files, or the image folder",
    )
    download: bool = Field(False, description="let torchvision fetch missing files")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="test share for digits and an image folder without val/"
    )
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of train held out as a validation split (0: none)"
    )
    max_samples: int | None = Field(None, ge=1, description="cap on every split, for quick runs")
    image_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="side of the square images; None keeps a source's own size "
        f"({DEFAULT_FOLDER_IMAGE_SIZE} for an image folder)",
    )
    channels: Literal[1, 3, "auto"] = Field(
        "auto", description="1 (grey), 3 (RGB) or auto: the source's own, or the majority"
    )
    num_workers: WorkersSetting = "auto"
    cache: bool = Field(
        True,
        description="image folder: keep the decoded images at image_size in a uint8 array "
        "under cache_dir that training reads instead of decoding every file every epoch",
    )
    cache_dir: str = Field(
        "data/02_intermediate/image_cache",
        description="where the image-folder caches live, one sub-folder per folder content, "
        "size and channels (outside the versioned datasets, so reruns reuse them)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.download and self.source not in TORCHVISION_SOURCES:
            raise ValueError(
                f"download=true only applies to torchvision sources "
                f"({', '.join(TORCHVISION_SOURCES)}), not source={self.source}; "
                f"set data_prep.download=false"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Splitting


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, parameter: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of the kept rows and of a held-out ``fraction``, stratified by label.

    ``parameter`` names the setting that asked for the split, for the error message.
    """
    try:
        kept, held = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels
        )
    except ValueError as err:
        raise ValueError(
            f"cannot hold out {parameter}={fraction} of {len(labels)} images stratified by "
            f"class ({err}); change data_prep.{parameter} or add images to the small classes"
        ) from err
    return np.sort(kept), np.sort(held)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted positions of ``size`` rows drawn per class in proportion to the class sizes.

    Shares are rounded by largest remainder, so the subset has exactly ``size`` rows even when
    ``size`` is smaller than the number of classes. Rows labelled alike (e.g. all -1 for
    unlabelled images) make a plain random subset.
    """
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = size * counts / len(labels)
    take = np.floor(quota).astype(np.int64)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: size - int(take.sum())]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def split_indices(
    labels: dict[str, np.ndarray], config: DataConfig
) -> dict[str, tuple[str, np.ndarray]]:
    """For each split, the source part it comes from and the sorted rows it takes there.

    ``labels`` holds one label array per part of the source: ``all`` for a source without a
    test split of its own (split by ``test_fraction``), else ``train``, ``test`` and
    optionally ``unlabeled`` (labelled -1). Validation rows come out of train; ``max_samples``
    then caps every split. All of it stratified and deterministic by seed.
    """
    if "all" in labels:
        train, test = stratified_split(
            labels["all"], config.test_fraction, config.seed, "test_fraction"
        )
        splits = {"train": ("all", train), "test": ("all", test)}
    else:
        splits = {part: (part, np.arange(len(y))) for part, y in labels.items()}
    if config.val_fraction > 0:
        part, train = splits["train"]
        kept, val = stratified_split(
            labels[part][train], config.val_fraction, config.seed, "val_fraction"
        )
        splits["train"], splits["val"] = (part, train[kept]), (part, train[val])
    if config.max_samples is not None:
        for split, (part, rows) in splits.items():
            subset = stratified_subset(labels[part][rows], config.max_samples, config.seed)
            splits[split] = (part, rows[subset])
    return {split: splits[split] for split in SPLITS if split in splits}
