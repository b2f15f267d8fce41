"""The contrastive model: its config, construction, saving and loading.

A model is input normalisation, a backbone (images -> representation r, see
:mod:`directclr.backbones`) and a projector (r -> embedding z, see
:mod:`directclr.projectors`). :class:`ModelConfig` says everything needed to rebuild it;
:func:`model_artifact` and :func:`model_from_artifact` are the one pair that saves and
reloads it as a weights-only dict, so inference and checkpoint import never pass through
training code.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from directclr.backbones import Backbone, Norm, Stem, build_backbone, representation_dim
from directclr.devices import resolve_device, resolve_precision, to_device
from directclr.projectors import DEFAULT_D0, METHODS, Method, build_projector, uses_d0


class ModelConfig(BaseModel):
    """Architecture: everything needed to rebuild the model from its state dict.

    ``d0`` exists only for the methods that use it (:func:`~directclr.projectors.uses_d0`):
    it defaults to 64 there and is ``None`` for every other method.
    """

    model_config = ConfigDict(extra="forbid")

    method: Method = "directclr"
    backbone: Backbone = "small_cnn"
    width: int = Field(64, ge=1, description="channels of small_cnn's first block (r: 8*width)")
    zero_init_residual: bool = Field(
        True, description="each residual block starts as the identity (last norm scale 0)"
    )
    norm: Norm = Field("batch", description="backbone normalisation; group has no batch statistics")
    stem: Stem = Field(
        "auto",
        description="ResNets: auto (resnet18 CIFAR stem, resnet50 ImageNet), cifar, imagenet",
    )
    d0: int | None = Field(
        None, ge=1, description="embedding size of directclr, fixed_low_rank and random_subset"
    )
    projector_hidden_dim: int | None = Field(
        None, ge=1, description="simclr's hidden layer; null: the representation's size"
    )
    projector_dim: int = Field(128, ge=1, description="z of simclr and simclr_linear")

    @model_validator(mode="after")
    def _check_d0(self) -> ModelConfig:
        if self.method == "simclr" and self.projector_hidden_dim is None:
            # The paper's projector is [2048, 2048, 128]: the hidden layer is r's size.
            self.projector_hidden_dim = representation_dim(self.backbone, self.width)
        if not uses_d0(self.method):
            if self.d0 is not None:
                users = ", ".join(m for m in METHODS if uses_d0(m))
                raise ValueError(
                    f"d0={self.d0} is set, but method={self.method} has no d0 (only {users} "
                    f"do); remove d0, or set it only for the runs whose method uses it"
                )
            return self
        if self.d0 is None:
            self.d0 = DEFAULT_D0
        dim = representation_dim(self.backbone, self.width)
        if self.d0 > dim:
            raise ValueError(
                f"d0={self.d0} is larger than the representation ({dim} dimensions for "
                f"backbone {self.backbone}); set d0 between 1 and {dim}"
            )
        return self


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


def build_model(
    config: ModelConfig, in_channels: int, mean: list[float], std: list[float], seed: int = 0
) -> ContrastiveModel:
    """The model a config describes, with fresh weights drawn from ``seed``."""
    torch.manual_seed(seed)
    backbone = build_backbone(
        config.backbone,
        in_channels,
        config.width,
        config.zero_init_residual,
        config.norm,
        config.stem,
    )
    projector = build_projector(
        config.method,
        backbone.output_dim,
        config.d0,
        config.projector_hidden_dim,
        config.projector_dim,
        seed,
    )
    return ContrastiveModel(backbone, projector, mean, std)


def model_artifact(model: ContrastiveModel, config: ModelConfig, in_channels: int) -> dict:
    """A weights-only-loadable dict: the architecture config and the state dict.

    ``config`` may be any config that extends :class:`ModelConfig` (the training settings):
    the architecture is kept, and, when it has them, the first view's augmentation recipe and
    the ``precision`` setting the model trained with (:func:`artifact_precision`).
    """
    architecture = ModelConfig.model_validate(
        config.model_dump(include=set(ModelConfig.model_fields))
    )
    artifact = {
        "config": architecture.model_dump(),
        "in_channels": in_channels,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    augmentation = getattr(config, "augmentation", None)
    if augmentation is not None:
        # The first view's recipe the model trained with: what LiDAR's views are made with.
        artifact["augmentation"] = augmentation.view1.model_dump(mode="json")
    precision = getattr(config, "precision", None)
    if precision is not None:
        # What the model's embeddings are exported in: the run's own setting.
        artifact["precision"] = precision
    return artifact


def artifact_precision(artifact: dict[str, Any]) -> str:
    """The ``precision`` setting a saved model trained with; ``auto`` for a file without one
    (an imported encoder, a file written before models recorded it)."""
    return artifact.get("precision", "auto")


def artifact_config(artifact: dict[str, Any]) -> ModelConfig:
    """The architecture of a saved model. Files written before d0 became per-method carry
    d0 for every method; for a method without one it is dropped here, so they still load."""
    config = dict(artifact["config"])
    if not uses_d0(config.get("method", "directclr")):
        config.pop("d0", None)
    return ModelConfig.model_validate(config)


def model_from_artifact(artifact: dict[str, Any]) -> ContrastiveModel:
    """Rebuild a frozen model from :func:`model_artifact`'s dict."""
    config = artifact_config(artifact)
    channels = int(artifact["in_channels"])
    model = build_model(config, channels, [0.0] * channels, [1.0] * channels)
    state = artifact["state_dict"]
    if config.backbone == "small_cnn" and not any(".residual." in key for key in state):
        raise ValueError(
            "this model file was saved before small_cnn ended in a residual block (the "
            "paper's architecture), so it cannot be rebuilt by this version: retrain it "
            "(kedro run --pipeline=<run> --params=pretraining.resume=false), or read it with "
            "the directclr version that wrote it"
        )
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def encode(
    model: ContrastiveModel,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 1024,
    device: str = "auto",
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations r and embeddings z with the frozen model, of uint8 ``images`` (a
    tensor, cut into batches of ``batch_size``, or any iterable of batches: uint8, or float
    in [0, 1] such as augmented views).

    The forward runs under bf16 autocast where ``precision`` (``auto``, ``fp32`` or
    ``bf16``: the setting the model trained with, :func:`artifact_precision`) resolves to
    it on this device for images of this size, by the rule training uses
    (:func:`~directclr.devices.resolve_precision`, given the images' shorter side); r and z
    are float32 either way. On CUDA the model runs channels_last, with batches copied in
    from pinned memory and r, z copied out into pinned memory without waiting on each batch.
    """
    target = resolve_device(device)
    cuda = target.type == "cuda"
    model = model.to(target, memory_format=torch.channels_last) if cuda else model.to(target)
    model.eval()
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    rs, zs = [], []
    autocast = None
    for batch in images:
        if autocast is None:  # resolved once, from the first batch's image size
            bf16, _ = resolve_precision(precision, target, min(batch.shape[-2:]))
            autocast = torch.autocast(target.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        x = to_device(batch, target)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            r, z = model(x)
        if cuda:
            rs.append(_to_pinned_host(r.float()))
            zs.append(_to_pinned_host(z.float()))
        else:
            rs.append(r.float().cpu())
            zs.append(z.float().cpu())
    if cuda:
        torch.cuda.synchronize(target)  # the non-blocking copies out have landed
        model.to("cpu", memory_format=torch.contiguous_format)
    else:
        model.cpu()
    return torch.cat(rs), torch.cat(zs)


def _to_pinned_host(x: torch.Tensor) -> torch.Tensor:
    """A non-blocking copy of a CUDA tensor into pinned host memory (valid once the stream
    has reached it)."""
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return host.copy_(x, non_blocking=True)
