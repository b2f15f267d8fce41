"""Batched SimCLR augmentations applied to a whole uint8 batch at once, on any device.

Every sample draws its own random parameters (crop box, flip, jitter factors and order, blur
sigma, ...), but the work is a handful of tensor operations over the batch: one
``grid_sample`` for crop + flip + resize, elementwise colour operations, one grouped
convolution per axis for the blur. Names and parameter semantics follow
``torchvision.transforms.v2`` (``RandomResizedCrop(scale=, ratio=)``, ``ColorJitter(brightness=,
contrast=, saturation=, hue=)``, ``RandomGrayscale(p=)``, ``GaussianBlur(sigma=)``,
``RandomSolarize(threshold=, p=)``), and for the same parameters each operation gives
torchvision's output (``tests/test_augment.py`` checks it against
``torchvision.transforms.v2.functional``).

The random parameters of the whole batch are drawn first, on the host from a CPU generator:
one vectorised draw per parameter, in a fixed order (:func:`draw_parameters`), and the host
also works out which samples each masked operation touches. Then each operation runs once, on
the samples that drew it. An accelerator gets all of it in one non-blocking copy from pinned
memory (:meth:`ViewParameters.to`) and never reports anything back, so no step waits on the
host. A seed gives the same draws on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from directclr.devices import to_device
from directclr.threads import one_cpu_thread

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
_LUMA = (0.2989, 0.587, 0.114)
# The four ColorJitter operations, numbered as torchvision's ``fn_idx``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
# The masked operations, numbered as ViewParameters.rows lists their samples: jitter operation
# ``op`` in a sample's order slot ``slot`` is ``4 * slot + op``; grayscale, blur and
# solarisation follow.
_GRAYSCALE_ROWS, _BLUR_ROWS, _SOLARIZE_ROWS = 16, 17, 18
_MASKED_OPERATIONS = 19


class ViewAugmentation(BaseModel):
    """The random transformation that produces one view of an image (values in [0, 1]).

    The defaults are SimCLR's recipe. ``strength`` s >= 0 scales the whole recipe, so one
    number moves a run from no augmentation to strong augmentation (the paper's first
    collapse mechanism):

    - jitter amounts (brightness, contrast, saturation, hue) are multiplied by s
      (hue capped at 0.5);
    - the probabilities of jitter, grayscale, blur and solarisation become min(1, p * s);
    - the flip probability becomes p * min(1, s): flipping more often than the recipe says
      would make two views more alike, not less;
    - the crop's area bounds become (min ** s, max ** s) and its aspect-ratio bounds
      (min ** s, max ** s), so crops grow to the whole image as s -> 0 and shrink for s > 1;
    - blur sigma and the solarisation threshold stay as they are (only how often those
      operations happen scales).

    s = 1 is the recipe itself; s = 0 is the identity (for square images; a non-square
    image gets its centre square, as ``RandomResizedCrop(scale=(1, 1), ratio=(1, 1))``).
    :meth:`scaled` gives the recipe a strength stands for.
    """

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
    blur_sigma: tuple[float, float] = Field(
        (0.1 / 224, 2.0 / 224),
        description="range of the blur's sigma as a fraction of the output image's side; the "
        "default is the paper's 0.1-2.0 px at 224 px",
    )
    blur_kernel_size: int | None = Field(
        None, ge=1, description="odd; default SimCLR's: a tenth of the image side, at least 3"
    )
    solarize_p: float = Field(0.0, ge=0, le=1)
    solarize_threshold: float = Field(0.5, ge=0, le=1)
    strength: float = Field(1.0, ge=0, description="scales the whole recipe; 1 is the recipe")

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
        if self.blur_kernel_size is not None and self.blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd, got {self.blur_kernel_size}")
        return self

    def scaled(self) -> ViewAugmentation:
        """The recipe this view applies: ``strength`` folded into the parameters (strength 1)."""
        s = self.strength
        if s == 1:
            return self
        return self.model_copy(
            update={
                "crop_scale": (self.crop_scale[0] ** s, self.crop_scale[1] ** s),
                "crop_ratio": (self.crop_ratio[0] ** s, self.crop_ratio[1] ** s),
                "hflip_p": self.hflip_p * min(1.0, s),
                "brightness": self.brightness * s,
                "contrast": self.contrast * s,
                "saturation": self.saturation * s,
                "hue": min(0.5, self.hue * s),
                "jitter_p": min(1.0, self.jitter_p * s),
                "grayscale_p": min(1.0, self.grayscale_p * s),
                "blur_p": min(1.0, self.blur_p * s),
                "solarize_p": min(1.0, self.solarize_p * s),
                "strength": 1.0,
            }
        )


class TwoViewAugmentation(BaseModel):
    """The paper's two asymmetric views (blur always on view 1, solarisation only on view 2)."""

    model_config = ConfigDict(extra="forbid")

    view1: ViewAugmentation = ViewAugmentation(blur_p=1.0, solarize_p=0.0)
    view2: ViewAugmentation = ViewAugmentation(blur_p=0.1, solarize_p=0.2)


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


def _bernoulli(n: int, p: float, generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample crop boxes ``(top, left, h, w)`` in pixels, as ``RandomResizedCrop`` draws them
    (on the host, from the CPU ``generator``).

    Like torchvision, each sample tries ``attempts`` (area, log-ratio) draws and keeps the first
    box that fits; a sample for which none fits gets the centre crop with the ratio clamped.
    """
    area = float(height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target_area = area * _uniform(n * attempts, *scale, generator).view(n, attempts)
    aspect = torch.exp(_uniform(n * attempts, *log_ratio, generator)).view(n, attempts)
    # Each attempt's (h, w); all the box arithmetic below is on whole numbers, so exact.
    hw = torch.stack([target_area / aspect, target_area * aspect], dim=2).sqrt_().round_()
    image = torch.tensor([height, width])
    fits = ((hw > 0) & (hw <= image)).all(dim=2)
    any_fit = fits.any(dim=1)
    hw = hw[torch.arange(n), fits.int().argmax(dim=1)]

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback = (round(width / ratio[0]), width)
    elif in_ratio > ratio[1]:
        fallback = (height, round(height * ratio[1]))
    else:
        fallback = (height, width)
    hw = torch.where(any_fit[:, None], hw, torch.tensor(fallback, dtype=hw.dtype))

    # torchvision: top ~ randint(0, H - h + 1), left ~ randint(0, W - w + 1); the fallback
    # is centred.
    room = image - hw
    u = torch.rand(n, 2, generator=generator)
    top_left = torch.where(any_fit[:, None], (u * (room + 1)).floor_(), (room / 2).floor_())
    return torch.cat([top_left, hw], dim=1)


def _jitter_runs(on: Sequence[bool], channels: int) -> torch.Tensor:
    """Which of the four jitter operations change images: those ``on``, and for single-channel
    images only brightness and contrast (saturation and hue leave them as they are, as in
    torchvision)."""
    return torch.tensor(
        [o and (channels == 3 or op in (BRIGHTNESS, CONTRAST)) for op, o in enumerate(on)]
    )


def _jitter_groups(order: torch.Tensor, apply: torch.Tensor, runs: torch.Tensor) -> torch.Tensor:
    """(N, 4): for each sample and order slot, the masked operation ``4 * slot + op`` that runs
    there, or ``_MASKED_OPERATIONS`` where none does (jitter not applied, or ``op`` off)."""
    runs = runs.to(order.device)
    groups = order + 4 * torch.arange(4, device=order.device)
    return torch.where(apply[:, None] & runs[order], groups, _MASKED_OPERATIONS)


def _rows_by_group(groups: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """For each group 0, ..., ``count`` - 1, the samples that belong to it, ascending.

    ``groups`` (N, K) names a group, or a number >= ``count`` for none, per sample and column; a
    group appears in one column only. One stable sort for all groups: no loop over them.
    """
    flat = groups.T.flatten()  # column after column, samples ascending within each
    sizes = torch.bincount(flat, minlength=count)[:count].tolist()
    rows = flat.argsort(stable=True)[: sum(sizes)] % len(groups)
    return rows.split(sizes)


@dataclass(frozen=True, eq=False)
class ViewParameters:
    """The random parameters of one view of a batch of N images, as :func:`draw_parameters`
    draws them on the host."""

    boxes: torch.Tensor
    """(N, 4) crop boxes ``(top, left, height, width)`` in input pixels."""
    flip: torch.Tensor
    """(N,) bool: mirror the sample."""
    jitter: torch.Tensor
    """(4, N): brightness, contrast and saturation factors and hue shift (rows of operations the
    recipe turns off are unused)."""
    sigma: torch.Tensor
    """(N,) blur sigma in output pixels (unused without blur)."""
    rows: tuple[torch.Tensor, ...]
    """For each masked operation (``4 * slot + op`` for jitter, then ``_GRAYSCALE_ROWS``,
    ``_BLUR_ROWS``, ``_SOLARIZE_ROWS``), the samples it changes, ascending."""

    def to(self, device: torch.device) -> ViewParameters:
        """These parameters on ``device``; on the host, themselves.

        Elsewhere they travel packed in one float32 buffer (sample indices are exact in float32
        up to 2 ** 24), in one non-blocking copy, and are sliced there: one copy per call, and
        nothing read back.
        """
        if device.type == "cpu":
            return self
        n = len(self.flip)
        packed = torch.cat(
            [self.boxes.flatten(), self.flip, self.jitter.flatten(), self.sigma, *self.rows]
        ).float()
        boxes, flip, jitter, sigma, rows = to_device(packed, device).split(
            [4 * n, n, 4 * n, n, len(packed) - 10 * n]
        )
        return ViewParameters(
            boxes.view(n, 4),
            flip.bool(),
            jitter.view(4, n),
            sigma,
            rows.long().split([len(r) for r in self.rows]),
        )


def draw_parameters(
    n: int,
    channels: int,
    image_size: tuple[int, int],
    size: tuple[int, int],
    config: ViewAugmentation,
    generator: torch.Generator | None = None,
) -> ViewParameters:
    """The random parameters of one view of ``n`` images of ``channels`` channels and
    ``image_size`` (height, width) resized to ``size``, drawn on the host from the CPU
    ``generator``.

    ``config`` is the recipe as it applies (:meth:`ViewAugmentation.scaled`). One vectorised
    draw per parameter, in a fixed order: crop boxes, flip, then for each operation the recipe
    turns on, which samples get it and its parameters: jitter (factors, hue shift, order),
    grayscale, blur (sigma), solarisation.
    """
    height, width = image_size
    boxes = sample_crop_boxes(n, height, width, config.crop_scale, config.crop_ratio, generator)
    flip = _bernoulli(n, config.hflip_p, generator)
    never = torch.zeros(n, dtype=torch.bool)

    amounts = (config.brightness, config.contrast, config.saturation, config.hue)
    jittered, jitter, order = never, torch.zeros(4, n), torch.zeros(n, 4, dtype=torch.long)
    if config.jitter_p > 0 and any(a > 0 for a in amounts):
        jittered = _bernoulli(n, config.jitter_p, generator)
        for op, amount in enumerate(amounts[:HUE]):
            if amount > 0:
                jitter[op].uniform_(max(0.0, 1 - amount), 1 + amount, generator=generator)
        if config.hue > 0:
            jitter[HUE].uniform_(-config.hue, config.hue, generator=generator)
        order = torch.rand(n, 4, generator=generator).argsort(dim=1)

    grayed = never
    if config.grayscale_p > 0 and channels == 3:
        grayed = _bernoulli(n, config.grayscale_p, generator)
    blurred, sigma = never, torch.zeros(n)
    if config.blur_p > 0:
        blurred = _bernoulli(n, config.blur_p, generator)
        sigma = _uniform(n, *(s * min(size) for s in config.blur_sigma), generator)
    solarized = never
    if config.solarize_p > 0:
        solarized = _bernoulli(n, config.solarize_p, generator)

    jitter_groups = _jitter_groups(
        order, jittered, _jitter_runs([a > 0 for a in amounts], channels)
    )
    others = torch.where(
        torch.stack([grayed, blurred, solarized], dim=1),
        torch.tensor([_GRAYSCALE_ROWS, _BLUR_ROWS, _SOLARIZE_ROWS]),
        _MASKED_OPERATIONS,
    )
    rows = _rows_by_group(torch.cat([jitter_groups, others], dim=1), _MASKED_OPERATIONS)
    return ViewParameters(boxes, flip, jitter, sigma, rows)


def _source_coordinates(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """Input pixel coordinate of each output pixel when ``length`` pixels resize to ``size``.

    As ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on the
    cropped image: pixel centres map linearly, and coordinates past the crop's first or last
    pixel are clamped to it (the crop's border is repeated, not its neighbours read).
    """
    j = torch.arange(size, device=start.device, dtype=start.dtype) + 0.5
    source = start[:, None] + j * (length / size)[:, None] - 0.5
    return source.clamp(min=start[:, None], max=(start + length - 1)[:, None])


def resized_crop(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image to its box, resize it to ``size`` (bilinear) and mirror it where ``flip``.

    Equals torchvision's ``resized_crop(..., antialias=False)`` followed by
    ``horizontal_flip``. torchvision's default ``antialias=True`` only differs when shrinking,
    which a crop resized back to the input size never is.
    """
    n, _, height, width = images.shape
    out_h, out_w = size
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    ys = _source_coordinates(top, h, out_h)
    xs = _source_coordinates(left, w, out_w)
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    # grid_sample's normalised coordinates (align_corners=False): pixel edges at -1 and 1.
    gx = (2 * xs + 1) / width - 1
    gy = (2 * ys + 1) / height - 1
    grid = torch.stack(
        (gx[:, None, :].expand(n, out_h, out_w), gy[:, :, None].expand(n, out_h, out_w)), dim=-1
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma as one channel, computed as torchvision's ``rgb_to_grayscale``."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clamped to [0, 1] (torchvision's _blend)."""
    f = factor[:, None, None, None]
    return (images * f).add_(other * (1 - f)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each image by its factor, as torchvision's ``adjust_brightness``."""
    return (images * factor[:, None, None, None]).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its grayscale version, as ``adjust_contrast``."""
    return _blend(images, grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its grayscale version, as ``adjust_saturation``."""
    if images.shape[1] == 1:
        return images
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's HSV hue by its shift (in turns, [-0.5, 0.5]), as ``adjust_hue``.

    A hue rotation keeps V (the largest channel) and the chroma V - min, so the RGB result
    comes straight from the shifted hue with the closed form
    ``c = V - chroma * clamp(min(t, 4 - t), 0, 1)``, ``t = (k + 6 hue) mod 6`` with k = 5, 3, 1
    for R, G, B: no HSV image, no six-sector lookup and no ``torch.where`` (slow on CPU).
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    # Which channel is the largest, with torchvision's (Pillow's) tie order: red, green, blue.
    is_r = value == r
    not_r = ~is_r
    is_g = (value == g).logical_and_(not_r)
    is_b = not_r.logical_and_(~is_g)
    # Hue in sixths of a turn: (g - b) / chroma, 2 + (b - r) / chroma or 4 + (r - g) / chroma.
    # Where chroma is 0 the numerator is 0 too, and so is the chroma the result is made of.
    hue6 = (g - b).mul_(is_r).add_((b - r).mul_(is_g)).add_((r - g).mul_(is_b))
    hue6.div_(chroma.clamp_min(1e-12)).add_(is_g, alpha=2).add_(is_b, alpha=4)
    hue6.add_(shift[:, None, None], alpha=6)
    k = torch.arange(5, 0, -2, device=images.device, dtype=images.dtype)
    t = hue6[:, None] + k[None, :, None, None]
    t.sub_(torch.floor(t / 6).mul_(6))
    ramp = torch.minimum(t, 4 - t).clamp_(0, 1)
    return ramp.mul_(chroma[:, None]).neg_().add_(value[:, None])


def _apply_to_rows(
    out: torch.Tensor,
    rows: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor],
) -> torch.Tensor:
    """``out`` with ``fn`` applied to the samples ``rows`` (distinct, on ``out``'s device);
    ``out`` is reused.

    ``fn(x, rows)`` transforms the samples ``x`` without modifying them; ``rows`` picks their
    per-sample parameters (``slice(None)`` for the whole batch). The batch's length and the
    rows' are shapes, known on the host: nothing is read back from a device.
    """
    if len(rows) == 0:
        return out
    if len(rows) == len(out):
        # Later operations write into the result: no expanded view (grayscale's).
        return fn(out, slice(None)).contiguous()
    return out.index_copy_(0, rows, fn(out.index_select(0, rows), rows))


def _jitter(
    out: torch.Tensor,
    factors: Sequence[torch.Tensor | None],
    rows: Sequence[torch.Tensor],
) -> torch.Tensor:
    """``out`` with each colour-jitter operation ``op`` applied, order slot after order slot,
    to the samples ``rows[4 * slot + op]`` with their ``factors[op]``; ``out`` is reused."""
    operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for slot in range(4):
        for op, fn in enumerate(operations):
            out = _apply_to_rows(
                out, rows[4 * slot + op], lambda x, r, f=fn, p=factors[op]: f(x, p[r])
            )
    return out


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor | None,
    contrast: torch.Tensor | None,
    saturation: torch.Tensor | None,
    hue: torch.Tensor | None,
    order: torch.Tensor,
    apply: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ColorJitter`` with per-sample factors and a per-sample order of the four operations.

    ``brightness``, ``contrast``, ``saturation`` are per-sample factors and ``hue`` per-sample
    shifts, shape (N,); ``None`` turns that operation off. ``order`` (N, 4) holds each
    sample's permutation of ``BRIGHTNESS, CONTRAST, SATURATION, HUE`` (torchvision's
    ``fn_idx``). Only samples where ``apply`` is true (default: all) are changed, and each
    operation is computed once per sample, in the slot that sample drew for it (``order`` and
    ``apply`` best on the host, so the choice of rows never waits on a device). Saturation and
    hue leave single-channel images unchanged, as in torchvision.
    """
    factors = (brightness, contrast, saturation, hue)
    if apply is None:
        apply = torch.ones(len(images), dtype=torch.bool, device=order.device)
    runs = _jitter_runs([f is not None for f in factors], images.shape[1])
    rows = _rows_by_group(_jitter_groups(order, apply, runs), 4 * 4)
    on_device = to_device(torch.cat(rows), images.device).split([len(r) for r in rows])
    return _jitter(images.clone(), factors, on_device)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma, as torchvision's ``gaussian_blur``.

    A ``kernel_size`` square kernel, reflect padding. An image too small to reflect the full
    kernel radius (where torchvision raises) gets the kernel cut to what fits, renormalised.
    """
    n, c, height, width = images.shape
    radius = kernel_size // 2
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(x[None, :] ** 2) / (2 * sigma[:, None].to(images.dtype) ** 2))
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    pad_x, pad_y = min(radius, width - 1), min(radius, height - 1)
    kx = kernel[:, radius - pad_x : radius + pad_x + 1]
    ky = kernel[:, radius - pad_y : radius + pad_y + 1]
    kx = kx / kx.sum(dim=1, keepdim=True)
    ky = ky / ky.sum(dim=1, keepdim=True)
    flat = F.pad(images.reshape(1, n * c, height, width), (pad_x, pad_x, pad_y, pad_y), "reflect")
    flat = F.conv2d(flat, kx[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, ky[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, height, width)


def blur_kernel_size(height: int, width: int) -> int:
    """SimCLR's kernel: about a tenth of the image side, odd, at least 3."""
    size = max(3, int(0.1 * min(height, width)))
    return size if size % 2 == 1 else size + 1


def solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert every value at or above ``threshold``, as torchvision's ``solarize``."""
    return torch.lerp(images, 1 - images, (images >= threshold).to(images.dtype))


def augment(
    images: torch.Tensor,
    config: ViewAugmentation,
    generator: torch.Generator | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One random view of every image in ``images`` (uint8 or float in [0, 1], NCHW).

    Returns float32 in [0, 1] on ``images``' device with the same number of channels (1 or 3),
    resized to ``size`` (default: the input size). The order is SimCLR's: crop and resize,
    flip, colour jitter, grayscale, blur, solarise. The random parameters come from
    ``generator``, a CPU generator whatever the images' device (default: torch's global one):
    the same generator state gives the same draws on every device. On CPU the work runs on one
    thread whatever ``torch.get_num_threads()`` says (:func:`directclr.threads.one_cpu_thread`);
    elsewhere the thread count is left alone (the host's draws are far below torch's grain for
    splitting work, and the setting is the whole process's).
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"augment draws its parameters on the host: pass a CPU generator "
            f"(torch.Generator()), not one on {generator.device}"
        )
    n, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"augment takes images with 1 or 3 channels, got {channels}")
    size = size or (height, width)
    config = config.scaled()
    with one_cpu_thread(images.device):
        drawn = draw_parameters(n, channels, (height, width), size, config, generator)
        return _apply(images, drawn.to(images.device), config, size)


def _apply(
    images: torch.Tensor, drawn: ViewParameters, config: ViewAugmentation, size: tuple[int, int]
) -> torch.Tensor:
    """The view of ``images`` that the parameters ``drawn`` (on the images' device) describe."""
    images = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    out = resized_crop(images, drawn.boxes, size, drawn.flip).clamp_(0, 1)
    out = _jitter(out, drawn.jitter, drawn.rows)
    out = _apply_to_rows(
        out, drawn.rows[_GRAYSCALE_ROWS], lambda x, rows: grayscale(x).expand_as(x)
    )
    kernel_size = config.blur_kernel_size or blur_kernel_size(*size)
    out = _apply_to_rows(
        out,
        drawn.rows[_BLUR_ROWS],
        lambda x, rows: gaussian_blur(x, drawn.sigma[rows], kernel_size),
    )
    out = _apply_to_rows(
        out, drawn.rows[_SOLARIZE_ROWS], lambda x, rows: solarize(x, config.solarize_threshold)
    )
    return out.clamp_(0, 1)
