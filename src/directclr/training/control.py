"""The untrained control: what the architecture gives before any training."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from directclr.batches import BatchSource
from directclr.devices import resolve_device
from directclr.models import ContrastiveModel, build_model
from directclr.training.config import PretrainingConfig


@torch.no_grad()
def random_init_model(
    source: BatchSource, config: PretrainingConfig, mean: list[float], std: list[float]
) -> ContrastiveModel:
    """The control: ``config``'s model with weights drawn from ``config.seed``, never trained.

    Its BatchNorm running statistics are re-estimated, without gradient, as the plain
    average over one pass of the training images (the same images pretraining sees, in the
    same batches), so the control is the best an untrained network of this architecture
    gives in eval mode, not one whose statistics are BatchNorm's initial zeros and ones.
    Returns the model on CPU in eval mode.
    """
    device = resolve_device(config.device)
    model = build_model(config, source.channels, mean, std, config.seed).to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch seen
    model.train()
    source.to(device)
    for batch, _ in source.epoch(0):
        model(batch.float() / 255)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval().cpu()


def untrained_history() -> pd.DataFrame:
    """The control's training history: the columns of one, and no epoch."""
    return pd.DataFrame(columns=["epoch", "step", "loss", "seconds"])


def control_summary(config: PretrainingConfig, images: int) -> str:
    """One line for the log: which architecture and seed the control is, and how many
    training images its BatchNorm statistics come from."""
    return (
        f"random_init: {config.method} architecture, seed {config.seed:d}, never trained; "
        f"BatchNorm statistics from {images:d} training images"
    )
