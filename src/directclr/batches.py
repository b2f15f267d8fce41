"""Where training batches come from: a uint8 tensor on the device, or an image folder (rows
of its decoded-image cache, or files decoded in DataLoader workers). All yield (uint8 images,
int64 labels) on the device; unlabelled images (STL-10's unlabeled split) carry the label
-1."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from directclr.data import ImageFolderSplit
from directclr.data.cache import manifest_cache
from directclr.devices import resolve_workers


class BatchSource(Protocol):
    """What the training loop needs from its data."""

    num_images: int
    channels: int
    image_side: int  # the shorter side of the training images, in pixels
    num_classes: int
    batch_size: int

    def to(self, device: torch.device | str) -> BatchSource: ...

    def steps_per_epoch(self) -> int: ...

    def epoch(
        self, index: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def probe_batch(self, size: int, seed: int) -> torch.Tensor: ...

    def fingerprint(self) -> str: ...

    def spec(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class _Batches:
    num_images: int
    batch_size: int

    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder of the epoch is dropped)."""
        return self.num_images // self.batch_size


class TensorBatches(_Batches):
    """Batches drawn from uint8 images held whole on the training device.

    Each epoch is a fresh permutation from a seeded generator whose state is part of a
    checkpoint, so a resumed run sees the same batches as an uninterrupted one. In a job of
    ``world`` processes every process draws the same permutation and takes its own
    contiguous share of each global batch of ``batch_size`` images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        seed: int,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")  # fmt: skip
        self.num_images, self.channels = images.shape[0], images.shape[1]
        self.image_side = min(images.shape[2], images.shape[3])
        labelled = labels[labels >= 0]
        self.num_classes = int(labelled.max()) + 1 if len(labelled) else 1
        self.batch_size = batch_size
        self._cpu_images, self._cpu_labels = images, labels
        self.images, self.labels = images, labels
        self.device = torch.device("cpu")
        self.rng = torch.Generator().manual_seed(seed)

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this source in another process (weights-only)."""
        return {"kind": "tensors", "images": self._cpu_images, "labels": self._cpu_labels,
                "batch_size": self.batch_size, "rng": self.rng.get_state()}  # fmt: skip

    def to(self, device: torch.device | str) -> TensorBatches:
        """Hold the images on ``device`` (the training device) from now on."""
        self.device = torch.device(device)
        self.images, self.labels = self._cpu_images.to(device), self._cpu_labels.to(device)
        return self

    def epoch(
        self, index: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        permutation = torch.randperm(self.num_images, generator=self.rng).to(self.device)
        share = self.batch_size // world
        for b in range(self.steps_per_epoch()):
            start = b * self.batch_size + rank * share
            rows = permutation[start : start + share]
            yield self.images[rows], self.labels[rows]

    def probe_batch(self, size: int, seed: int) -> torch.Tensor:
        order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(seed))
        return self.images[order[:size].to(self.device)]

    def fingerprint(self) -> str:
        # The tensors' own memory (a view of a contiguous CPU tensor), never a copy of it.
        h = hashlib.sha256(str(tuple(self._cpu_images.shape)).encode())
        h.update(memoryview(self._cpu_images.contiguous().numpy()))
        h.update(memoryview(self._cpu_labels.contiguous().numpy()))
        return h.hexdigest()

    def state(self) -> dict[str, Any]:
        return {"order_rng": self.rng.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["order_rng"])


def _read_ahead(read: Callable, items: Iterable, depth: int = 2) -> Iterator:
    """``read(item)`` for each item, in order, computed ``depth`` items ahead in one thread,
    so the next batch is read from disk (``pread`` releases the GIL) while this one trains."""
    items = iter(items)
    with ThreadPoolExecutor(1) as pool:
        pending = deque(
            pool.submit(read, item) for _, item in zip(range(depth), items, strict=False)
        )
        while pending:
            done = pending.popleft().result()
            for item in items:
                pending.append(pool.submit(read, item))
                break
            yield done


class _Rows(Sampler[int]):
    """The rows of the current epoch, set before each epoch (read in this process only)."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class FolderBatches(_Batches):
    """Batches of an image-folder manifest: rows of its decoded-image cache when data_prep
    made one, else files decoded and resized in DataLoader workers.

    Never holds the folder, or the cache, in memory. Epoch ``e`` is shuffled with seed
    ``seed + e``, so the order needs no saved state to be reproduced on resume. In a job
    every process reads only its own share of each global batch. The cache holds exactly the
    pixels decoding gives and a batch keeps its images' order, so both paths give the same
    batches. The cache path reads a batch ahead in a thread rather than in worker processes:
    with decoding gone, reading rows is a copy, and processes would only add the transfer.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        split: str,
        batch_size: int,
        seed: int,
        num_workers: int | str = "auto",
    ) -> None:
        self.manifest, self.split = manifest, split
        self.num_images = len(manifest[f"{split}_paths"])
        self.channels = int(manifest["channels"])
        self.image_side = int(manifest["image_size"])
        self.num_classes = len(manifest["classes"])
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device("cpu")
        self.num_workers = num_workers
        self.cache = manifest_cache(manifest)
        self._loader: DataLoader | None = None
        self._order = _Rows()

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this source in another process (weights-only)."""
        return {"kind": "manifest", "manifest": self.manifest, "split": self.split,
                "batch_size": self.batch_size, "seed": self.seed,
                "num_workers": self.num_workers}  # fmt: skip

    def to(self, device: torch.device | str) -> FolderBatches:
        self.device = torch.device(device)
        self._loader = None  # whether batches are pinned depends on the device
        return self

    def epoch(
        self, index: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(
            self.num_images, generator=torch.Generator().manual_seed(self.seed + index)
        )
        share = self.batch_size // world
        steps = self.steps_per_epoch()
        mine = order[: steps * self.batch_size].view(steps, world, share)[:, rank].reshape(-1)
        pin = self.device.type == "cuda"
        if self.cache is not None:
            rows, labels = (
                self.manifest[f"{self.split}_rows"],
                self.manifest[f"{self.split}_labels"],
            )

            def read(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return self.cache.read(rows[batch], pin=pin), labels[batch]

            for images, batch_labels in _read_ahead(read, mine.split(share)):
                yield (images.to(self.device, non_blocking=pin),
                       batch_labels.to(self.device, non_blocking=pin))  # fmt: skip
            return
        self._order.rows = mine.tolist()
        for images, labels in self._decoding_loader(share, pin):
            yield images.to(self.device, non_blocking=pin), labels.to(self.device, non_blocking=pin)

    def _decoding_loader(self, share: int, pin: bool) -> DataLoader:
        """One DataLoader for the whole run: its workers stay up between epochs (no start-up
        at each epoch) and keep a few batches decoded ahead; each epoch's rows come from the
        sampler, set before the epoch starts."""
        if self._loader is None:
            workers = resolve_workers(self.num_workers)
            self._loader = DataLoader(
                ImageFolderSplit(self.manifest, self.split),
                batch_size=share,
                sampler=self._order,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )
        return self._loader

    def probe_batch(self, size: int, seed: int) -> torch.Tensor:
        dataset = ImageFolderSplit(self.manifest, self.split)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        if self.cache is not None:
            rows = self.manifest[f"{self.split}_rows"][order[:size]]
            return self.cache.read(rows).to(self.device)
        return torch.stack([dataset[int(i)][0] for i in order[:size]]).to(self.device)

    def fingerprint(self) -> str:
        labels = self.manifest[f"{self.split}_labels"]
        listing = {
            "paths": self.manifest[f"{self.split}_paths"],
            "labels": [int(v) for v in labels],
            "size": self.manifest["image_size"],
        }
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    def state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        return None


def training_batches(
    dataset: dict[str, Any], batch_size: int, seed: int, num_workers: int | str = "auto"
) -> BatchSource:
    """The pretraining data of a data_prep artifact: its train split, plus STL-10's
    unlabeled split when present; an image folder streams from disk (its cache, or files)."""
    if dataset.get("kind") == "manifest":
        return FolderBatches(dataset, "train", batch_size, seed, num_workers)
    images, labels = dataset["train_images"], dataset["train_labels"]
    if "unlabeled_images" in dataset:
        extra = dataset["unlabeled_images"]
        images = torch.cat([images, extra])
        labels = torch.cat([labels, torch.full((len(extra),), -1, dtype=labels.dtype)])
    return TensorBatches(images, labels, batch_size, seed)


def source_from_spec(spec: dict[str, Any]) -> BatchSource:
    """The inverse of ``spec()``: the same source, rebuilt in this process."""
    if spec["kind"] == "manifest":
        return FolderBatches(spec["manifest"], spec["split"], spec["batch_size"], spec["seed"],
                             spec["num_workers"])  # fmt: skip
    source = TensorBatches(spec["images"], spec["labels"], spec["batch_size"], seed=0)
    source.rng.set_state(spec["rng"])
    return source
