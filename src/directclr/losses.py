"""Contrastive losses: the paper's InfoNCE and SimCLR's NT-Xent.

Both compare L2-normalised embeddings by cosine similarity over a temperature and are
computed in float32 with log-sum-exp. They differ in the negatives: the paper's code
(facebookresearch/directclr) contrasts each anchor with the N - 1 other embeddings of the
*other* view and averages the two directions; SimCLR contrasts it with all 2N - 2 other
embeddings of both views.
"""

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


def paper_info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    anchors: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The paper's loss: InfoNCE(z1, z2) / 2 + InfoNCE(z2, z1) / 2.

    With u = normalize(z1), v = normalize(z2) and s_ij = u_i . v_j / temperature,

        InfoNCE(z1, z2) = mean_i [ -s_ii + log sum_j exp(s_ij) ],

    j running over the N embeddings of the other view: one positive, N - 1 negatives (as
    ``infoNCE`` in the paper's ``main.py``, where ``nn`` and ``p`` are the two views).

    ``anchors=(a, b)`` averages only over anchors a..b-1 (in both directions), still against
    all N candidates: one process's share of a loss over a batch gathered from several
    processes. The mean of the shares over equal shards is the full loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {z1.shape} and {z2.shape}")
    start, stop = anchors or (0, z1.shape[0])
    u, v = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    positives = torch.arange(start, stop, device=u.device)
    forward = F.cross_entropy(u[start:stop] @ v.T / temperature, positives)
    backward = F.cross_entropy(v[start:stop] @ u.T / temperature, positives)
    return (forward + backward) / 2
