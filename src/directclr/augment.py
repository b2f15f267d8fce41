"""Batched SimCLR augmentations applied to a whole uint8 batch at once, on any device.

Every sample draws its own random parameters (crop box, flip, jitter factors, blur sigma,
...), but the work is a handful of tensor operations over the batch: one ``grid_sample``
for crop + flip + resize, elementwise colour operations, one grouped convolution for the
blur. Names and parameter semantics follow ``torchvision.transforms.v2``
(``RandomResizedCrop(scale=, ratio=)``, ``ColorJitter(brightness=, contrast=, saturation=,
hue=)``, ``RandomGrayscale(p=)``, ``GaussianBlur(sigma=)``, ``RandomSolarize(threshold=, p=)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

_LUMA = (0.299, 0.587, 0.114)


class ViewAugmentation(BaseModel):
    """The random transformation that produces one view of an image (values in [0, 1])."""

    model_config = ConfigDict(extra="forbid")

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(1.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0, le=1)
    solarize_threshold: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> ViewAugmentation:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        return self


class TwoViewAugmentation(BaseModel):
    """The paper's two asymmetric views (blur always on view 1, solarisation only on view 2)."""

    model_config = ConfigDict(extra="forbid")

    view1: ViewAugmentation = ViewAugmentation(blur_p=1.0, solarize_p=0.0)
    view2: ViewAugmentation = ViewAugmentation(blur_p=0.1, solarize_p=0.2)


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


def _bernoulli(n: int, p: float, generator, device) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample crop boxes ``(top, left, h, w)`` in pixels, as ``RandomResizedCrop`` draws them.

    Like torchvision, each sample tries ``attempts`` (area, log-ratio) draws and keeps the first
    box that fits; a sample for which none fits gets the centre crop with the ratio clamped.
    """
    area = float(height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target_area = area * _uniform(n * attempts, *scale, generator, device).view(n, attempts)
    aspect = torch.exp(_uniform(n * attempts, *log_ratio, generator, device)).view(n, attempts)
    w = torch.sqrt(target_area * aspect).round()
    h = torch.sqrt(target_area / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.argmax(fits.int(), dim=1)
    any_fit = fits.any(dim=1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))

    # torchvision: top ~ randint(0, H - h + 1), left ~ randint(0, W - w + 1)
    u = torch.rand(n, 2, device=device, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top = torch.where(any_fit, top, torch.floor((height - h) / 2))
    left = torch.where(any_fit, left, torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image to its box, optionally mirror it, and resize to ``size`` (bilinear)."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    # Normalised coordinates with align_corners=False: pixel edges at -1 and 1.
    scale_x = w / width
    scale_y = h / height
    centre_x = (left + w / 2) / width * 2 - 1
    centre_y = (top + h / 2) / height * 2 - 1
    sign = 1.0 - 2.0 * flip.to(images.dtype)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = scale_x * sign
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, [n, images.shape[1], *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, one channel, as torchvision's ``rgb_to_grayscale``."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor[:, None, None, None] * a + (1 - factor[:, None, None, None]) * b).clamp(0, 1)


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def _hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    h, s, v = images.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v], dim=1),
            torch.stack([t, v, v, q, p, p], dim=1),
            torch.stack([p, p, t, v, v, q], dim=1),
        ],
        dim=1,
    )  # (N, 3 channels, 6 sectors, H, W)
    index = i[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


def color_jitter(
    images: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    apply: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``ColorJitter`` with per-sample factors, applied where ``apply`` is true.

    The four operations run in one random order per batch (torchvision draws one per image).
    Saturation and hue leave single-channel images unchanged, as in torchvision.
    """
    n, device = images.shape[0], images.device
    one = torch.ones(n, device=device)

    def factor(amount: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - amount), 1 + amount, generator, device)
        return torch.where(apply, f, one)

    b, c, s = factor(brightness), factor(contrast), factor(saturation)
    h = torch.where(apply, _uniform(n, -hue, hue, generator, device), torch.zeros(n, device=device))
    out = images
    for op in torch.randperm(4, generator=generator, device=device).tolist():
        if op == 0 and brightness > 0:
            out = _blend(out, torch.zeros_like(out), b)
        elif op == 1 and contrast > 0:
            mean = grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
            out = _blend(out, mean.expand_as(out), c)
        elif op == 2 and saturation > 0 and out.shape[1] == 3:
            out = _blend(out, grayscale(out).expand_as(out), s)
        elif op == 3 and hue > 0 and out.shape[1] == 3:
            hsv = _rgb_to_hsv(out)
            hsv[:, 0] = (hsv[:, 0] + h[:, None, None]) % 1.0
            out = _hsv_to_rgb(hsv)
    return out


def gaussian_blur(
    images: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (reflect padding, as torchvision)."""
    n, c, height, width = images.shape
    radius = kernel_size // 2
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(x[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = torch.zeros_like(kernel)
    identity[:, radius] = 1
    kernel = torch.where(apply[:, None], kernel, identity)
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    flat = images.reshape(1, n * c, height, width)
    pad_x = min(radius, width - 1)
    pad_y = min(radius, height - 1)
    kx = kernel[:, radius - pad_x : radius + pad_x + 1] if pad_x < radius else kernel
    ky = kernel[:, radius - pad_y : radius + pad_y + 1] if pad_y < radius else kernel
    kx = kx / kx.sum(dim=1, keepdim=True)
    ky = ky / ky.sum(dim=1, keepdim=True)
    flat = F.pad(flat, (pad_x, pad_x, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kx[:, None, None, :], groups=n * c)
    flat = F.pad(flat, (0, 0, pad_y, pad_y), mode="reflect")
    flat = F.conv2d(flat, ky[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, height, width)


def blur_kernel_size(height: int, width: int) -> int:
    """SimCLR's kernel: about a tenth of the image side, odd, at least 3."""
    size = max(3, int(0.1 * min(height, width)))
    return size if size % 2 == 1 else size + 1


def augment(
    images: torch.Tensor,
    config: ViewAugmentation,
    generator: torch.Generator | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One random view of every image in ``images`` (uint8 or float in [0, 1], NCHW).

    Returns float32 in [0, 1] with the same number of channels, resized to ``size``
    (default: the input size).
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    n, channels, height, width = images.shape
    device = images.device
    size = size or (height, width)

    boxes = sample_crop_boxes(
        n, height, width, config.crop_scale, config.crop_ratio, generator, device
    )
    flip = _bernoulli(n, config.hflip_p, generator, device)
    out = resized_crop(images, boxes, size, flip).clamp_(0, 1)

    jitter = _bernoulli(n, config.jitter_p, generator, device)
    out = color_jitter(
        out, config.brightness, config.contrast, config.saturation, config.hue, jitter, generator
    )

    gray = _bernoulli(n, config.grayscale_p, generator, device)
    if channels == 3:
        out = torch.where(gray[:, None, None, None], grayscale(out).expand_as(out), out)

    blur = _bernoulli(n, config.blur_p, generator, device)
    sigma = _uniform(n, *config.blur_sigma, generator, device)
    out = gaussian_blur(out, sigma, blur, blur_kernel_size(*size)).clamp_(0, 1)

    solarize = _bernoulli(n, config.solarize_p, generator, device)
    solarized = torch.where(out >= config.solarize_threshold, 1 - out, out)
    out = torch.where(solarize[:, None, None, None], solarized, out)
    return out
