"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    anchors: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (SimCLR's NT-Xent) over the 2N embeddings of N positive pairs.

    With u = normalize(z) for the 2N rows and s_ij = u_i . u_j / temperature, each row i
    with positive p(i) contributes

        -s_{i,p(i)} + log sum_{j != i} exp(s_ij),

    and the loss is the mean over all 2N rows, so both views act as anchors. Computed in
    float32 with log-sum-exp, it stays finite at temperature 0.05 and for large batches.

    ``anchors=(a, b)`` averages only over the rows of pairs a..b-1 (in both views), still
    against all 2N candidates: one process's share of a loss over a batch gathered from
    several processes. The mean of the shares over equal shards is the full loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {z1.shape} and {z2.shape}")
    n = z1.shape[0]
    start, stop = anchors or (0, n)
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    pairs = torch.arange(start, stop, device=u.device)
    rows = torch.cat([pairs, pairs + n])
    logits = u[rows] @ u.T / temperature
    logits[torch.arange(len(rows), device=u.device), rows] = float("-inf")
    positives = torch.cat([pairs + n, pairs])
    return F.cross_entropy(logits, positives)
