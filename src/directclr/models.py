"""Backbones, projectors and the contrastive model: how the embedding z is made from r.

A *method* (the paper's table rows) is nothing but a projector: the module that maps the
representation r to the embedding z the InfoNCE loss sees.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torchvision
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
# Methods whose embedding is d0-dimensional, so d0 must fit in the representation.
LOW_RANK_METHODS = ("directclr", "fixed_low_rank", "random_subset")
Backbone = Literal["small_cnn", "resnet18", "resnet50"]
Stem = Literal["auto", "cifar", "imagenet"]
BACKBONES: tuple[str, ...] = get_args(Backbone)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with groups of (at most) 8 channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise ValueError(f"unknown norm {kind!r}; choose batch or group")


class SmallCNN(nn.Module):
    """A four-block conv net for images of up to 32 px (digits, MNIST, CIFAR).

    conv3x3-norm-ReLU blocks of width w, 2w, 4w, 8w with 2x2 max-pooling after the second
    and third block, then global average pooling: the representation has 8w dimensions.
    ``norm`` is ``batch`` (BatchNorm) or ``group`` (GroupNorm: no batch statistics, so a
    sample's representation does not depend on the rest of its batch).
    """

    def __init__(self, in_channels: int = 1, width: int = 64, norm: str = "batch") -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                norm_layer(norm, cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.MaxPool2d(2),
            *block(4 * width, 8 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.output_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


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
    """

    def __init__(self, d0: int, seed: int) -> None:
        super().__init__()
        self.d0 = d0
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return r[:, : self.d0]
        index = torch.randperm(r.shape[1], generator=self.generator)[: self.d0]
        return r[:, index.to(r.device)]


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier: the representation is the pooled features.

    ``cifar_stem`` replaces the 7x7 stride-2 stem and its max-pool with a 3x3 stride-1 conv,
    the usual choice for 32-96 px images. ``zero_init_residual`` starts every residual block
    as the identity (its last BN's scale at zero).
    """

    def __init__(
        self,
        depth: int,
        in_channels: int,
        cifar_stem: bool,
        zero_init_residual: bool,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        factory = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]
        net = factory(
            weights=None,
            zero_init_residual=zero_init_residual,
            norm_layer=lambda channels: norm_layer(norm, channels),
        )
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.output_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def representation_dim(backbone: str, width: int) -> int:
    """Size of r for a backbone, known before building it."""
    if backbone == "small_cnn":
        return 8 * width
    if backbone == "resnet18":
        return 512
    if backbone == "resnet50":
        return 2048
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


def build_backbone(
    name: str,
    in_channels: int,
    width: int = 64,
    zero_init_residual: bool = False,
    norm: str = "batch",
    stem: str = "auto",
) -> nn.Module:
    """``small_cnn`` (up to 32 px), ``resnet18`` or ``resnet50`` from torchvision.

    ``stem="auto"`` gives resnet18 the CIFAR stem (3x3 conv, stride 1, no max-pool; for
    32-96 px) and resnet50 torchvision's ImageNet stem (7x7 stride-2 conv and max-pool);
    ``cifar`` or ``imagenet`` chooses explicitly (for example to read torchvision's own
    ImageNet ResNet-18)."""
    if name == "small_cnn":
        return SmallCNN(in_channels, width, norm)
    if name == "resnet18":
        return ResNetBackbone(18, in_channels, stem != "imagenet", zero_init_residual, norm)
    if name == "resnet50":
        return ResNetBackbone(50, in_channels, stem == "cifar", zero_init_residual, norm)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def build_projector(
    method: str, dim: int, d0: int, hidden_dim: int, out_dim: int, seed: int
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


class ContrastiveModel(nn.Module):
    """Input normalisation, backbone (-> representation r) and projector (-> embedding z).

    Takes images as float in [0, 1] (NCHW); the per-channel mean and std of the training
    data are buffers, so the saved model is self-contained.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def representation(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.representation(images)
        return r, self.projector(r)
