from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from directclr.data import iterate_batches
from directclr.devices import DeviceSetting, WorkersSetting
from directclr.models import encode, model_from_artifact

logger = logging.getLogger(__name__)


class EmbeddingsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1024, ge=1)
    device: DeviceSetting = "auto"
    num_workers: WorkersSetting = 2


def split_images(dataset: dict, split: str, params: EmbeddingsConfig):
    """The uint8 images of a split: the stored tensor, or an image folder decoded in
    DataLoader workers batch by batch, in manifest order."""
    if dataset.get("kind") != "manifest":
        return dataset[f"{split}_images"]
    batches = iterate_batches(dataset, split, params.batch_size, num_workers=params.num_workers)
    return (images for images, _ in batches)


def export_embeddings(model: dict, dataset: dict, params: EmbeddingsConfig) -> dict:
    """Representations r and embeddings z of every labelled split (train, val when the
    dataset has one, test), with their labels."""
    frozen = model_from_artifact(model)
    out = {}
    for split in (s for s in ("train", "val", "test") if f"{s}_labels" in dataset):
        r, z = encode(frozen, split_images(dataset, split, params), params.batch_size,
                      params.device)  # fmt: skip
        out[f"{split}_r"], out[f"{split}_z"] = r, z
        out[f"{split}_labels"] = dataset[f"{split}_labels"]
    logger.info(
        "embeddings: model -> r %s and z %s for %d train and %d test images",
        tuple(out["train_r"].shape[1:]), tuple(out["train_z"].shape[1:]),
        len(out["train_r"]), len(out["test_r"]),
    )  # fmt: skip
    return out
