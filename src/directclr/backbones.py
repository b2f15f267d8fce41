"""Backbones: the networks that map images to the representation r.

``small_cnn`` for images of up to 32 px, torchvision's ``resnet18`` and ``resnet50`` (with a
CIFAR stem as an option). :func:`representation_dim` knows the size of r before a backbone
is built, so a config can be checked without building anything; :func:`first_conv_key` and
:func:`stem_kernel` say where a backbone's first convolution sits in its state dict and how
wide its kernel is, so a checkpoint's input channels and stem can be read before building one.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

Backbone = Literal["small_cnn", "resnet18", "resnet50"]
Stem = Literal["auto", "cifar", "imagenet"]
Norm = Literal["batch", "group"]
BACKBONES: tuple[str, ...] = get_args(Backbone)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with groups of (at most) 8 channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise ValueError(f"unknown norm {kind!r}; choose batch or group")


class ResidualBlock(nn.Module):
    """ResNet-50's bottleneck block at constant width c: ReLU(x + branch(x)), the branch a
    1x1 conv to c/4 channels, a 3x3 conv, and a 1x1 conv back to c, each followed by a norm
    (and a ReLU but for the last).

    ``zero_init_residual`` sets the last norm's scale to zero, so the block starts as the
    identity. That is what makes DirectCLR work in the paper's ResNet: r[:, d0:] gets no
    gradient from the loss, so this block's own branch never changes for those channels,
    yet the identity path carries the previous block's features, trained through the
    branch's first convolution (which reads every channel), into r[:, d0:].
    """

    def __init__(self, channels: int, norm: str, zero_init_residual: bool) -> None:
        super().__init__()
        inner = max(1, channels // 4)
        self.conv1 = nn.Conv2d(channels, inner, 1, bias=False)
        self.norm1 = norm_layer(norm, inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, inner)
        self.conv3 = nn.Conv2d(inner, channels, 1, bias=False)
        self.norm3 = norm_layer(norm, channels)
        if zero_init_residual:
            nn.init.zeros_(self.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = torch.relu(self.norm1(self.conv1(x)))
        branch = torch.relu(self.norm2(self.conv2(branch)))
        return torch.relu(x + self.norm3(self.conv3(branch)))


class SmallCNN(nn.Module):
    """A conv net for images of up to 32 px (digits, MNIST, CIFAR) that ends, like the
    paper's ResNet, in a residual block.

    conv3x3-norm-ReLU blocks of width w, 2w, 4w, 8w with 2x2 max-pooling after the second
    and third block, a :class:`ResidualBlock` of width 8w, then global average pooling: the
    representation has 8w dimensions. ``norm`` is ``batch`` (BatchNorm) or ``group``
    (GroupNorm: no batch statistics, so a sample's representation does not depend on the
    rest of its batch).
    """

    FIRST_CONV_KEY = "features.0.weight"  # the first block's convolution
    KERNEL = 3  # of every convolution in ``features``

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        norm: str = "batch",
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, self.KERNEL, padding=self.KERNEL // 2, bias=False),
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
        )
        self.residual = ResidualBlock(8 * width, norm, zero_init_residual)
        self.output_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.features(x)).mean((2, 3))


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier: the representation is the pooled features.

    ``cifar_stem`` replaces the 7x7 stride-2 stem and its max-pool with a 3x3 stride-1 conv,
    the usual choice for 32-96 px images. ``zero_init_residual`` starts every residual block
    as the identity (its last BN's scale at zero).
    """

    FIRST_CONV_KEY = "net.conv1.weight"  # torchvision's stem convolution, inside ``net``
    CIFAR_STEM_KERNEL = 3
    IMAGENET_STEM_KERNEL = 7  # torchvision's

    def __init__(
        self,
        depth: int,
        in_channels: int,
        cifar_stem: bool,
        zero_init_residual: bool,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        # Imported here: torchvision's models pull in torch._dynamo (seconds at start-up), which
        # a run on SmallCNN, and every kedro command, would otherwise pay.
        from torchvision.models import resnet18, resnet50

        factory = {18: resnet18, 50: resnet50}[depth]
        net = factory(
            weights=None,
            zero_init_residual=zero_init_residual,
            norm_layer=lambda channels: norm_layer(norm, channels),
        )
        if cifar_stem:
            kernel = self.CIFAR_STEM_KERNEL
            net.conv1 = nn.Conv2d(
                in_channels, 64, kernel, stride=1, padding=kernel // 2, bias=False
            )
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            kernel = self.IMAGENET_STEM_KERNEL
            net.conv1 = nn.Conv2d(
                in_channels, 64, kernel, stride=2, padding=kernel // 2, bias=False
            )
        self.output_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _uses_cifar_stem(name: str, stem: str) -> bool:
    """``stem="auto"`` gives resnet18 the CIFAR stem and resnet50 the ImageNet one."""
    return stem != "imagenet" if name == "resnet18" else stem == "cifar"


def first_conv_key(name: str) -> str:
    """The state-dict key of the first convolution's weight in backbone ``name`` as
    :func:`build_backbone` builds it (its ``shape[1]`` is the number of input channels)."""
    if name == "small_cnn":
        return SmallCNN.FIRST_CONV_KEY
    if name in ("resnet18", "resnet50"):
        return ResNetBackbone.FIRST_CONV_KEY
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def stem_kernel(name: str, stem: str = "auto") -> int:
    """The kernel size of the first convolution of backbone ``name`` with ``stem``, known
    before building it."""
    if name == "small_cnn":
        return SmallCNN.KERNEL
    if name in ("resnet18", "resnet50"):
        if _uses_cifar_stem(name, stem):
            return ResNetBackbone.CIFAR_STEM_KERNEL
        return ResNetBackbone.IMAGENET_STEM_KERNEL
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


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
        return SmallCNN(in_channels, width, norm, zero_init_residual)
    cifar_stem = _uses_cifar_stem(name, stem)
    if name == "resnet18":
        return ResNetBackbone(18, in_channels, cifar_stem, zero_init_residual, norm)
    if name == "resnet50":
        return ResNetBackbone(50, in_channels, cifar_stem, zero_init_residual, norm)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
