"""The embeddings a frozen model gives a dataset: r and z of every labelled split, and the
augmented views of fixed training images that LiDAR is measured on.

:func:`export_embeddings` is the whole export; :class:`EmbeddingsConfig` its settings. The
forward runs as the model's own run trained: :func:`~directclr.models.encode` with the
``precision`` recorded in the model file (:func:`~directclr.models.artifact_precision`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field

from directclr.augment import TwoViewAugmentation, ViewAugmentation, augment
from directclr.data import iterate_batches
from directclr.devices import DeviceSetting, WorkersSetting, resolve_device, resolve_workers
from directclr.models import ContrastiveModel, artifact_precision, encode, model_from_artifact


class LidarViewsConfig(BaseModel):
    """The augmented views LiDAR (the spectrum stage) is measured on: ``views`` views of each
    of ``samples`` fixed training images."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(
        1000,
        ge=0,
        description="training images, each one of LiDAR's classes (capped at the train split; "
        "below 2: no views exported, no LiDAR)",
    )
    views: int = Field(16, ge=2, description="augmented views of each image")
    seed: int = Field(0, description="seeds the choice of images and the views' generator")
    augmentation: ViewAugmentation = Field(
        default_factory=lambda: TwoViewAugmentation().view1,
        description="the recipe of each view for a model that does not carry the view1 it "
        "trained with (an imported encoder, an older model file)",
    )


class EmbeddingsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1024, ge=1)
    device: DeviceSetting = "auto"
    num_workers: WorkersSetting = "auto"
    lidar: LidarViewsConfig = LidarViewsConfig()


def split_images(dataset: dict, split: str, params: EmbeddingsConfig):
    """The uint8 images of a split: the stored tensor, or an image folder batch by batch in
    manifest order (rows of its decoded-image cache, or files decoded in DataLoader workers)."""
    if dataset.get("kind") != "manifest":
        return dataset[f"{split}_images"]
    batches = iterate_batches(
        dataset, split, params.batch_size, num_workers=resolve_workers(params.num_workers)
    )
    return (images for images, _ in batches)


def lidar_indices(train_size: int, config: LidarViewsConfig) -> torch.Tensor:
    """The training images LiDAR's views are made of: min(samples, train_size) of them,
    drawn without replacement with ``config.seed``, in increasing order."""
    n = min(config.samples, train_size)
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randperm(train_size, generator=generator)[:n].sort().values


def keep_rows(
    batches: Iterable[torch.Tensor], indices: torch.Tensor, kept: list[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """Pass ``batches`` through unchanged, keeping the rows at ``indices`` (sorted, counted
    over all batches) in ``kept`` as they go by: one decoding pass serves both."""
    start = 0
    for batch in batches:
        stop = start + len(batch)
        inside = indices[(indices >= start) & (indices < stop)]
        kept.append(batch[inside - start].clone())
        start = stop
        yield batch


@torch.no_grad()
def encode_views(
    model: ContrastiveModel,
    images: torch.Tensor,
    view: ViewAugmentation,
    views: int,
    seed: int,
    batch_size: int = 1024,
    device: str = "auto",
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """r and z of ``views`` augmented views of each uint8 image, shaped (n, views, d), with
    the frozen model, about ``batch_size`` views at a time, computed as
    :func:`~directclr.models.encode` computes (in ``precision``; on CUDA: channels_last,
    copies out without waiting). The views' parameters come from one CPU generator seeded
    with ``seed``: the same settings give the same views, on every device."""
    target = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    per_batch = max(1, batch_size // views)

    def augmented() -> Iterator[torch.Tensor]:
        for chunk in images.split(per_batch):
            batch = chunk.to(target).repeat_interleave(views, dim=0)
            yield augment(batch, view, generator)

    r, z = encode(model, augmented(), device=device, precision=precision)
    return r.reshape(len(images), views, -1), z.reshape(len(images), views, -1)


def export_embeddings(model: dict, dataset: dict, params: EmbeddingsConfig) -> dict:
    """Representations r and embeddings z of every labelled split (train, val when the
    dataset has one, test) of the saved ``model``, with their labels; and for LiDAR, r and z
    of ``lidar.views`` augmented views of ``lidar.samples`` fixed training images
    (``lidar_r``, ``lidar_z``: (n, q, d)), the images' indices in the train split and the
    settings that made them. Computed in the precision the model trained with."""
    frozen = model_from_artifact(model)
    precision = artifact_precision(model)
    lidar = params.lidar
    indices = lidar_indices(len(dataset["train_labels"]), lidar)
    kept: list[torch.Tensor] = []
    out = {}
    for split in (s for s in ("train", "val", "test") if f"{s}_labels" in dataset):
        images = split_images(dataset, split, params)
        if split == "train" and len(indices) >= 2:
            if isinstance(images, torch.Tensor):
                kept.append(images[indices])
            else:
                images = keep_rows(images, indices, kept)
        r, z = encode(frozen, images, params.batch_size, params.device, precision)
        out[f"{split}_r"], out[f"{split}_z"] = r, z
        out[f"{split}_labels"] = dataset[f"{split}_labels"]
    if kept:
        # The views the model trained with; an imported encoder's: the setting's.
        trained = model.get("augmentation")
        view = ViewAugmentation.model_validate(trained) if trained else lidar.augmentation
        out["lidar_r"], out["lidar_z"] = encode_views(
            frozen, torch.cat(kept), view, lidar.views, lidar.seed, params.batch_size,
            params.device, precision,
        )  # fmt: skip
        out["lidar_indices"] = indices
        out["lidar_settings"] = {
            "split": "train", "samples": len(indices), "views": lidar.views, "seed": lidar.seed,
            "augmentation": view.model_dump(mode="json"),
        }  # fmt: skip
    return out


def export_summary(embeddings: dict) -> str:
    """One line on what :func:`export_embeddings` exported, for the stage's log."""
    views = embeddings.get("lidar_settings")
    return (
        f"embeddings: model -> r {tuple(embeddings['train_r'].shape[1:])} and z "
        f"{tuple(embeddings['train_z'].shape[1:])} for {len(embeddings['train_r'])} train and "
        f"{len(embeddings['test_r'])} test images; "
        + (f"{views['samples']} x {views['views']} augmented views for LiDAR" if views
           else "no LiDAR views")
    )  # fmt: skip
