"""Where a run computes: the torch device a setting names, and whether it runs in bf16."""

from __future__ import annotations

import os
from typing import Annotated, Literal

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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without waiting for the copy: from the host to a CUDA device
    through pinned memory (so the copy runs beside the host's next work); itself when it is
    there already."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


# On a CPU with native bf16 (avx512_bf16 or AMX), ``precision: auto`` is bf16 autocast for
# images of at least this many pixels a side, fp32 below. benchmarks/precision.py found bf16
# keeps the linear probe on r within the seed spread over 3 seeds on the 8x8 digits (bf16 -
# fp32 +0.0009 +- 0.0016) and on benchmarks/peer.py's 28x28 images (-0.0008 +- 0.0008); it
# trained the 28x28 images 1.44x faster but the 8x8 digits of the default run 0.93x (the
# convolutions on 8x8 maps are too small for bf16 to pay). 16 lies between the two measured
# sides; the benchmark's speed-by-side table is what would move it.
CPU_BF16_MIN_SIDE = 16
# Overrides what ``precision: auto`` resolves to, on every device: ``fp32`` or ``bf16``. The
# tests set ``fp32``, so that they stay deterministic whatever CPU runs them.
AUTO_PRECISION_ENV = "DIRECTCLR_AUTO_PRECISION"


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), and what says so.

    Asks torch's run-time CPU detection; on a torch without it, the kernel's CPU flags."""
    probes = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))
    checks = [(flag, getattr(torch.cpu, name, None)) for flag, name in probes]
    if all(check is not None for _, check in checks):
        found = [flag for flag, check in checks if check()]
    else:
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                flags = {
                    word for line in cpuinfo if line.startswith("flags") for word in line.split()
                }
        except OSError:
            flags = set()
        found = [flag for flag, _ in probes if flag in flags]
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"


def resolve_precision(
    precision: str, device: torch.device, image_side: int | None = None
) -> tuple[bool, str]:
    """Whether a run on ``device`` computes its forward and backward under bf16 autocast, and
    why. ``fp32`` and ``bf16`` are what they say; ``auto`` is bf16 on CUDA GPUs that support
    it, and on CPUs with native bf16 (detected at run time) for images of at least
    ``CPU_BF16_MIN_SIDE`` pixels a side (``image_side``; unknown counts as small); fp32
    elsewhere. The environment variable ``DIRECTCLR_AUTO_PRECISION`` (``fp32`` or ``bf16``)
    overrides ``auto``.

    Either way the loss, the online probe, the spectrum and exported embeddings are float32.
    """
    if precision == "bf16":
        return True, "precision=bf16"
    if precision == "fp32":
        return False, "precision=fp32"
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ValueError(
                f"{AUTO_PRECISION_ENV}={forced!r}: set it to fp32 or bf16, or unset it"
            )
        return forced == "bf16", f"precision=auto, and {AUTO_PRECISION_ENV}={forced}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, "precision=auto on a CUDA GPU that supports bf16"
        return False, "precision=auto on a CUDA GPU without bf16"
    if device.type == "cpu":
        native, why = cpu_bf16_support()
        if not native:
            return False, f"precision=auto on CPU: {why}"
        if image_side is not None and image_side >= CPU_BF16_MIN_SIDE:
            return True, (f"precision=auto on CPU: {why}, and the images are {image_side} px "
                          f"(bf16 from {CPU_BF16_MIN_SIDE} px)")  # fmt: skip
        size = "of unknown size" if image_side is None else f"{image_side} px, below"
        return False, (f"precision=auto on CPU: {why}, but the images are {size} "
                       f"{CPU_BF16_MIN_SIDE} px (bf16 was slower on small ones)")  # fmt: skip
    return False, f"precision=auto on {device.type}: fp32"


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
    Annotated[int, Field(ge=0)] | Literal["auto"],
    Field(
        description="DataLoader workers decoding an image folder; auto: this process's share "
        "of the CPUs it may use (divided among a job's processes on this machine), at most 8"
    ),
]


def resolve_workers(setting: int | str) -> int:
    """The DataLoader workers a ``num_workers`` setting means in this process: a number as it
    is; ``auto`` the CPUs this process may use, shared among the ``LOCAL_WORLD_SIZE``
    processes of a job on this machine (set by torchrun and ``devices: N``), between 1 and 8
    (decoding gains little beyond 8 workers while each holds its own copy of the dataset
    object)."""
    if setting != "auto":
        return int(setting)
    # sched_getaffinity: the CPUs this process may run on (a container's share); not on macOS
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (cpus or 1) // max(1, local)))
