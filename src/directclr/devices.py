"""Where a run computes: the torch device a setting names, and whether it runs in bf16."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field


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
        raise ValueError(
            f"device {name!r} asked for, but Apple MPS is not present; use auto or cpu"
        )
    return device


def use_bf16(precision: str, device: torch.device) -> bool:
    """``bf16`` always; ``auto`` on CUDA GPUs that support bf16; fp32 otherwise."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def _check_device(name: str) -> str:
    if name != "auto":
        resolve_device(name)
    return name


# One definition of the settings every stage that computes shares, so each rule has one home.
DeviceSetting = Annotated[
    str,
    Field(description="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps"),
    AfterValidator(_check_device),
]
WorkersSetting = Annotated[
    int, Field(ge=0, description="DataLoader workers decoding an image folder")
]
