"""Methods: how the embedding z the InfoNCE loss sees is made from the representation r.

A *method* (a row of the paper's tables) is nothing but a projector, the module mapping r to
z. Two questions about a method are asked in several places and answered here only:
:func:`uses_d0` (its embedding is d0-dimensional, so it needs a d0) and
:func:`has_leading_subvector` (z is r[:, :d0] itself, so r's two parts, :data:`HEAD` and
:data:`TAIL`, are worth analysing and probing apart: :func:`leading_parts`).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

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
METHODS: tuple[str, ...] = get_args(Method)
_USES_D0 = frozenset({"directclr", "fixed_low_rank", "random_subset"})
DEFAULT_D0 = 64


def uses_d0(method: str) -> bool:
    """The method's embedding is d0-dimensional: directclr, fixed_low_rank, random_subset."""
    return method in _USES_D0


def has_leading_subvector(method: str) -> bool:
    """The method's embedding is the fixed leading sub-vector r[:, :d0] (DirectCLR)."""
    return method == "directclr"


# The names of DirectCLR's two parts of r: the leading sub-vector the loss sees (z itself),
# and the rest, which gets no gradient from the loss and trains only through the last
# block's identity path.
HEAD, TAIL = "r[:d0]", "r[d0:]"


def leading_parts(r: torch.Tensor, method: str, d0: int | None) -> dict[str, torch.Tensor]:
    """r's two parts along its last dimension, r[..., :d0] as :data:`HEAD` and r[..., d0:] as
    :data:`TAIL`, for a method whose z is the leading sub-vector
    (:func:`has_leading_subvector`) and a d0 short of r's size; empty for any other."""
    if not has_leading_subvector(method) or d0 >= r.shape[-1]:
        return {}
    return {HEAD: r[..., :d0], TAIL: r[..., d0:]}


class MLPProjector(nn.Module):
    """SimCLR's projector: Linear-BN-ReLU-Linear-BN."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.net(r)


class DiagonalProjector(nn.Module):
    """z = r * d with a trainable vector d (a diagonal matrix; Prop. 1 of the paper)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.scale


class FixedLowRankProjector(nn.Module):
    """z = Q^T r with a fixed random Q of d0 orthonormal columns (Prop. 2 of the paper).

    Under cosine similarity this is the same as the rank-d0 projection matrix Q Q^T.
    """

    def __init__(self, dim: int, d0: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, d0, generator=g))
        self.register_buffer("basis", q)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r @ self.basis


class LeadingSubvector(nn.Module):
    """DirectCLR: z = r[:, :d0], a fixed low-rank diagonal projector with no parameters."""

    def __init__(self, d0: int) -> None:
        super().__init__()
        self.d0 = d0

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r[:, : self.d0]


class RandomSubvector(nn.Module):
    """The Appendix F control: a fresh random d0-subset of r at every training step.

    Outside training (export, analysis) it returns the leading d0 coordinates, so the
    exported z is deterministic.

    The subset is drawn on the module's device, from a generator that lives there: no index
    is copied from the host at each step. Moving the module to another device type starts
    a generator there from ``seed`` (the draws of one device type are not another's); on
    CPU the draws are those of a CPU generator seeded with ``seed``.
    """

    def __init__(self, d0: int, seed: int) -> None:
        super().__init__()
        self.d0 = d0
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        module = super()._apply(fn, recurse)
        device = fn(torch.empty(0, device=self.generator.device)).device
        if device != self.generator.device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return module

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return r[:, : self.d0]
        index = torch.randperm(r.shape[1], generator=self.generator, device=r.device)
        return r[:, index[: self.d0]]


def build_projector(
    method: str, dim: int, d0: int | None, hidden_dim: int, out_dim: int, seed: int
) -> nn.Module:
    """The projector that turns a ``dim``-dimensional r into z for ``method``."""
    if method == "simclr":
        return MLPProjector(dim, hidden_dim, out_dim)
    if method == "simclr_linear":
        return nn.Linear(dim, out_dim, bias=False)
    if method == "no_projector":
        return nn.Identity()
    if method == "orthogonal":
        return nn.utils.parametrizations.orthogonal(nn.Linear(dim, dim, bias=False))
    if method == "diagonal":
        return DiagonalProjector(dim)
    if method == "fixed_low_rank":
        return FixedLowRankProjector(dim, d0, seed)
    if method == "directclr":
        return LeadingSubvector(d0)
    if method == "random_subset":
        return RandomSubvector(d0, seed)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
