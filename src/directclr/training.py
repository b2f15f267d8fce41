"""Contrastive pretraining: one loop for every method, readable top to bottom.

Each step: draw a batch of uint8 images (already on the training device), make two
augmented views of the whole batch at once, compute (r, z) for both, apply InfoNCE to z,
and train an online linear probe on the detached r. The probe sees labels; the backbone
never does.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from directclr.analysis import covariance_spectrum, effective_rank
from directclr.augment import TwoViewAugmentation, augment
from directclr.losses import info_nce
from directclr.models import ContrastiveModel, build_backbone, build_projector

logger = logging.getLogger(__name__)

Method = Literal[
    "simclr",
    "simclr_linear",
    "no_projector",
    "orthogonal",
    "diagonal",
    "fixed_low_rank",
    "directclr",
    "random_subset",
]


class ModelConfig(BaseModel):
    """Architecture: everything needed to rebuild the model from its state dict."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "directclr"
    backbone: Literal["small_cnn"] = "small_cnn"
    width: int = Field(64, ge=1, description="channels of the first backbone block")
    d0: int = Field(64, ge=1, description="embedding size for directclr and the low-rank rows")
    projector_hidden_dim: int = Field(512, ge=1)
    projector_dim: int = Field(128, ge=1)


class PretrainingConfig(ModelConfig):
    """Every knob of a pretraining run, validated before any compute."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: int = Field(2, ge=0)
    temperature: float = Field(0.1, gt=0)
    seed: int = 0
    device: str = "auto"
    augmentation: TwoViewAugmentation = TwoViewAugmentation()
    probe_lr: float = Field(1e-2, gt=0, description="learning rate of the online linear probe")
    rank_every: int = Field(1, ge=1, description="epochs between effective-rank measurements")

    @model_validator(mode="after")
    def _check(self) -> PretrainingConfig:
        if self.device != "auto":
            resolve_device(self.device)
        return self


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is present; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but Apple MPS is not present; use auto or cpu")
    return device


def build_model(
    config: ModelConfig, in_channels: int, mean: list[float], std: list[float], seed: int = 0
) -> ContrastiveModel:
    """The model a config describes, with fresh weights drawn from ``seed``."""
    torch.manual_seed(seed)
    backbone = build_backbone(config.backbone, in_channels, config.width)
    dim = backbone.output_dim
    if config.method in ("directclr", "fixed_low_rank", "random_subset") and config.d0 > dim:
        raise ValueError(
            f"d0={config.d0} is larger than the representation ({dim} dimensions); "
            f"set d0 between 1 and {dim}"
        )
    projector = build_projector(
        config.method, dim, config.d0, config.projector_hidden_dim, config.projector_dim, seed
    )
    return ContrastiveModel(backbone, projector, mean, std)


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup to ``base_lr``, then cosine decay to zero."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(config: PretrainingConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def _probe_ranks(model: ContrastiveModel, images: torch.Tensor) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    r, z = model(images.float() / 255)
    model.train(was_training)
    return (
        effective_rank(covariance_spectrum(r.cpu())),
        effective_rank(covariance_spectrum(z.cpu())),
    )


def pretrain(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
) -> tuple[ContrastiveModel, pd.DataFrame]:
    """Train ``config.method`` on uint8 ``images`` (N, C, H, W); return the model and history.

    The history has one row per epoch: loss, learning rate, online-probe accuracy (on the
    training batches, from detached r), images/s, and, every ``rank_every`` epochs, the
    effective rank of r and z on a fixed batch of un-augmented images.
    """
    n = images.shape[0]
    if n < config.batch_size:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set ({n} images); "
            f"lower batch_size"
        )
    device = resolve_device(config.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    order_generator = torch.Generator().manual_seed(config.seed)

    model = build_model(config, images.shape[1], mean, std, config.seed).to(device)
    num_classes = int(labels.max()) + 1
    probe = nn.Linear(model.backbone.output_dim, num_classes).to(device)
    optimizer = _optimizer(config, model.parameters())
    probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=config.probe_lr)

    images = images.to(device)
    labels = labels.to(device)
    probe_images = images[torch.randperm(n, generator=order_generator)[: min(n, 1024)].to(device)]

    steps_per_epoch = n // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = steps_per_epoch * config.warmup_epochs
    rows = []
    step = 0
    model.train()
    for epoch in range(config.epochs):
        start = time.perf_counter()
        permutation = torch.randperm(n, generator=order_generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for b in range(steps_per_epoch):
            lr = learning_rate(step, total_steps, warmup_steps, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = permutation[b * config.batch_size : (b + 1) * config.batch_size]
            batch = images[index]
            view1 = augment(batch, config.augmentation.view1, generator)
            view2 = augment(batch, config.augmentation.view2, generator)
            r, z = model(torch.cat([view1, view2]))
            z1, z2 = z.chunk(2)
            loss = info_nce(z1, z2, config.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {step} (epoch {epoch}, lr {lr:.3g}); "
                    f"lower lr or raise temperature"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            logits = probe(r.detach()[: len(index)])
            probe_loss = F.cross_entropy(logits, labels[index])
            probe_optimizer.zero_grad(set_to_none=True)
            probe_loss.backward()
            probe_optimizer.step()

            loss_sum += loss.detach()
            correct += (logits.argmax(1) == labels[index]).sum()
            step += 1
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch + 1,
            "step": step,
            "loss": float(loss_sum) / steps_per_epoch,
            "lr": lr,
            "online_probe_accuracy": float(correct) / (steps_per_epoch * config.batch_size),
            "images_per_s": steps_per_epoch * config.batch_size / seconds,
            "effective_rank_r": np.nan,
            "effective_rank_z": np.nan,
        }
        if (epoch + 1) % config.rank_every == 0 or epoch + 1 == config.epochs:
            row["effective_rank_r"], row["effective_rank_z"] = _probe_ranks(model, probe_images)
        rows.append(row)
        logger.info(
            "epoch %d/%d  loss %.4f  lr %.2e  online probe %.3f  %.0f img/s  erank r %.1f z %.1f",
            row["epoch"], config.epochs, row["loss"], row["lr"], row["online_probe_accuracy"],
            row["images_per_s"], row["effective_rank_r"], row["effective_rank_z"],
        )  # fmt: skip
    model.eval()
    return model.cpu(), pd.DataFrame(rows)


@torch.no_grad()
def encode(
    model: ContrastiveModel, images: torch.Tensor, batch_size: int = 1024, device: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations r and embeddings z of uint8 ``images`` with the frozen model."""
    target = resolve_device(device)
    model = model.to(target).eval()
    rs, zs = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(target).float() / 255
        r, z = model(batch)
        rs.append(r.float().cpu())
        zs.append(z.float().cpu())
    model.cpu()
    return torch.cat(rs), torch.cat(zs)


def model_artifact(model: ContrastiveModel, config: ModelConfig, in_channels: int) -> dict:
    """A weights-only-loadable dict: the architecture config and the state dict."""
    architecture = ModelConfig.model_validate(config.model_dump(include=set(ModelConfig.model_fields)))
    return {
        "config": architecture.model_dump(),
        "in_channels": in_channels,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def model_from_artifact(artifact: dict) -> ContrastiveModel:
    """Rebuild a frozen model from :func:`model_artifact`'s dict."""
    config = ModelConfig.model_validate(artifact["config"])
    channels = int(artifact["in_channels"])
    model = build_model(config, channels, [0.0] * channels, [1.0] * channels)
    model.load_state_dict(artifact["state_dict"])
    return model.eval()
