"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (SimCLR's NT-Xent) over the 2N embeddings of N positive pairs.

    With u = normalize(z) for the 2N rows and s_ij = u_i . u_j / temperature, each row i
    with positive p(i) contributes

        -s_{i,p(i)} + log sum_{j != i} exp(s_ij),

    and the loss is the mean over all 2N rows, so both views act as anchors. Computed in
    float32 with log-sum-exp, it stays finite at temperature 0.05 and for large batches.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {z1.shape} and {z2.shape}")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = u @ u.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)
    return F.cross_entropy(logits, positives)


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce` with a fixed temperature."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return info_nce(z1, z2, self.temperature)
