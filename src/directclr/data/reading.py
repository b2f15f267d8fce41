"""Reading a prepared dataset back: an image-folder split batch by batch (rows of its
decoded-image cache, or files decoded in DataLoader workers), or any split as one uint8 tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from directclr.data.cache import manifest_cache
from directclr.data.config import SPLITS
from directclr.data.pixels import decode_image


def check_split(manifest: dict[str, Any], split: str) -> None:
    """A KeyError naming the splits the manifest has, when ``split`` is not one of them."""
    if f"{split}_paths" not in manifest:
        available = [s for s in SPLITS if f"{s}_paths" in manifest]
        raise KeyError(f"the manifest has no {split} split; it has {', '.join(available)}")


class ImageFolderSplit(Dataset):
    """One split of an image-folder manifest: item i is (uint8 (C, S, S) image, label).

    ``root`` overrides the manifest's root, for a folder that has moved since data_prep.
    """

    def __init__(self, manifest: dict[str, Any], split: str, root: str | None = None) -> None:
        check_split(manifest, split)
        self.root = Path(root if root is not None else manifest["root"])
        self.paths = manifest[f"{split}_paths"]
        self.labels = manifest[f"{split}_labels"]
        self.size, self.channels = int(manifest["image_size"]), int(manifest["channels"])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.root / self.paths[i]
        try:
            image = decode_image(path, self.size, self.channels)
        except Exception as err:  # see _ScanFiles: PIL raises many types for a broken file
            raise OSError(
                f"{path} could not be decoded ({err.__class__.__name__}: {err}); it was readable "
                f"when data_prep ran, so the folder changed since: rerun data_prep"
            ) from err
        return torch.from_numpy(image), int(self.labels[i])


def iterate_batches(
    manifest: dict[str, Any],
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    *,
    drop_last: bool = False,
    pin_memory: bool = False,
    root: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 (B, C, S, S) images, int64 labels) of one split of an image-folder
    manifest: rows of its decoded-image cache when it has one, else files decoded in
    ``num_workers`` DataLoader worker processes. Both give the same batches.

    The order is the manifest's, or with ``shuffle`` a permutation fixed by ``seed`` (pass a
    different seed each epoch, e.g. ``seed + epoch``, for a fresh order). Both paths draw it
    here, the same way, so the cache changes no batch.
    """
    check_split(manifest, split)
    n = len(manifest[f"{split}_paths"])
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    cache = manifest_cache(manifest)
    if cache is not None:
        rows, labels = manifest[f"{split}_rows"], manifest[f"{split}_labels"]
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            batch = order[start : start + batch_size]
            yield cache.read(rows[batch], pin=pin_memory), labels[batch]
        return
    loader = DataLoader(
        ImageFolderSplit(manifest, split, root),
        batch_size=batch_size,
        sampler=order.tolist(),
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
    yield from loader


def materialize(
    dataset: dict[str, Any],
    split: str,
    num_workers: int = 0,
    batch_size: int = 256,
    root: str | None = None,
) -> torch.Tensor:
    """All images of one split as one uint8 (N, C, H, W) tensor, from either kind of artifact:
    a tensors artifact gives its own; a manifest is decoded (for folders that fit in memory).

    The labels are ``dataset[f"{split}_labels"]`` in the same order.
    """
    if dataset.get("kind", "tensors") == "tensors":
        return dataset[f"{split}_images"]
    size, channels = int(dataset["image_size"]), int(dataset["channels"])
    out = torch.empty((len(dataset[f"{split}_paths"]), channels, size, size), dtype=torch.uint8)
    start = 0
    for images, _ in iterate_batches(
        dataset, split, batch_size, num_workers=num_workers, root=root
    ):
        out[start : start + len(images)] = images
        start += len(images)
    return out
