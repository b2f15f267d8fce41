"""Pixels of uint8 (N, C, H, W) images: decoding a file, channels, size and channel statistics.

Shared by both kinds of source, so a grey or colour file, in memory or in a folder, gives the
same pixels.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


def _fit(file: str | os.PathLike | io.BytesIO, size: int) -> tuple[Image.Image, str]:
    """The RGB image at ``size`` x ``size`` and the file's own PIL mode."""
    with Image.open(file) as img:
        mode = img.mode
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
        upright = ImageOps.exif_transpose(img)
    if upright.mode.startswith("I;16"):  # 16-bit grey: keep the high byte instead of clipping
        upright = Image.fromarray((np.asarray(upright) >> 8).astype(np.uint8))
    rgb = upright.convert("RGB")
    width, height = rgb.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    rgb = rgb.resize(new_size, Image.Resampling.BILINEAR)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return rgb.crop((left, top, left + size, top + size)), mode


def decode_image(file: str | os.PathLike | io.BytesIO, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): EXIF-rotated, converted to RGB, its
    shorter side resized to ``size`` (bilinear), centre-cropped, then made grey if asked.

    Grey comes from the resized RGB image, so grey and colour files give the same pixels
    whichever ``channels`` is chosen, and the same luma as :func:`to_channels`.
    """
    rgb, _ = _fit(file, size)
    if channels == 1:
        return np.array(rgb.convert("L"))[None]
    return np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1))


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images with ``channels`` channels: grey is repeated into RGB, and
    RGB becomes grey with PIL's ITU-R 601-2 luma, so both kinds of source agree exactly."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    luma = (images.to(torch.int32) * weights).sum(1, keepdim=True) + 0x8000
    return (luma >> 16).to(torch.uint8)


def resize(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to size x size (bilinear, antialiased), in chunks."""
    if tuple(images.shape[2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].float()
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images on the [0, 1] scale.

    Sums are exact integers, so the result does not depend on chunking or on the order.
    """
    total = torch.zeros(images.shape[1], dtype=torch.int64)
    squares = torch.zeros(images.shape[1], dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(torch.int64)
        total += batch.sum((0, 2, 3))
        squares += (batch**2).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    return _mean_std(total.tolist(), squares.tolist(), count)


def _mean_std(total: list[int], squares: list[int], count: int) -> tuple[list[float], list[float]]:
    mean = [s / (count * 255) for s in total]
    std = [
        math.sqrt(count * q - s * s) / (count * 255) for s, q in zip(total, squares, strict=True)
    ]
    return mean, std
