"""Throughput of the batched augmentation engine against torchvision's per-image PIL pipeline.

Both make SimCLR's two asymmetric views (TwoViewAugmentation's defaults) of 32x32 RGB images.
The engine (directclr.augment) takes a uint8 batch of 256 at once; the baseline is the
``torchvision.transforms`` pipeline people write for CIFAR, called on one PIL image at a
time in one process. kornia's batched augmentations, when installed, are measured beside them
as the library alternative (same recipe, its own semantics where they differ).

All run on one CPU thread (the engine always does on CPU; the PIL pipeline as in a DataLoader
worker; kornia is set to it), so the comparison is at equal resources. They run interleaved
(A, B, C, A, B, C, ...) in one process and each reports the median of its repetitions, so a
machine shared with other work slows them alike. The last line is
``ratio=<engine images/s / PIL images/s>``, the median over the repetitions of each one's
ratio (the spread of those ratios is printed above it), so one noisy repetition does not
decide; target >= 4.

First it prints the engine's fixed cost per call (one view), what a launch-bound accelerator
pays whatever the batch: the host side alone (``draw_parameters``, and packing the parameters
for a device) at batches 1, 256 and 4096; the whole call on ``--device`` at batches 8 to 64,
with the fitted intercept (the fixed cost) and slope (the cost per image); and, at batch 256,
the host-to-device copies one call makes (counted on the meta device) and the tensor
operations it dispatches (on the CPU; each is a kernel launch on an accelerator). ``--baseline
REV`` times ``src/directclr/augment.py`` as it was at git revision REV beside it, interleaved,
for a before/after.

    python benchmarks/augmentation.py [--quick] [--device cuda] [--baseline REV]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import directclr.augment
from directclr.augment import (
    TwoViewAugmentation,
    ViewAugmentation,
    augment,
    blur_kernel_size,
    draw_parameters,
)

SIZE = 32
BATCH = 256


def blur_pixels(view: ViewAugmentation, size: int) -> tuple[float, float]:
    """The view's blur sigma range in pixels (the recipe gives it as a fraction of the side)."""
    return (view.blur_sigma[0] * size, view.blur_sigma[1] * size)


def pil_view(view: ViewAugmentation, size: int) -> T.Compose:
    """``view``'s recipe as the per-image torchvision pipeline (PIL in, float tensor out)."""
    kernel = view.blur_kernel_size or blur_kernel_size(size, size)
    return T.Compose([
        T.RandomResizedCrop(size, scale=view.crop_scale, ratio=view.crop_ratio),
        T.RandomHorizontalFlip(view.hflip_p),
        T.RandomApply(
            [T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
            p=view.jitter_p,
        ),
        T.RandomGrayscale(view.grayscale_p),
        T.RandomApply([T.GaussianBlur(kernel, sigma=blur_pixels(view, size))], p=view.blur_p),
        T.RandomSolarize(round(255 * view.solarize_threshold), p=view.solarize_p),
        T.ToTensor(),
    ])  # fmt: skip


def kornia_view(view: ViewAugmentation, size: int) -> torch.nn.Module:
    """``view``'s recipe with kornia.augmentation (per-sample parameters, batched)."""
    import kornia.augmentation as K

    kernel = view.blur_kernel_size or blur_kernel_size(size, size)
    return torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=view.crop_scale, ratio=view.crop_ratio),
        K.RandomHorizontalFlip(p=view.hflip_p),
        K.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue, p=view.jitter_p),
        K.RandomGrayscale(p=view.grayscale_p),
        K.RandomGaussianBlur((kernel, kernel), blur_pixels(view, size), p=view.blur_p),
        K.RandomSolarize(thresholds=0.0, additions=0.0, p=view.solarize_p),
    )


def engine_at(revision: str) -> ModuleType:
    """``directclr.augment`` as it was at git ``revision`` (for a before/after)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{revision}:src/directclr/augment.py"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    module = ModuleType(f"augment_at_{revision}")
    sys.modules[module.__name__] = module  # pydantic resolves the recipe's annotations there
    exec(compile(source, f"augment.py@{revision}", "exec"), module.__dict__)
    return module


class Dispatches(TorchDispatchMode):
    """Counts the tensor operations dispatched inside the block, and among them the copies
    between devices."""

    def __init__(self) -> None:
        super().__init__()
        self.operations = 0
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.operations += 1
        source = {torch.ops.aten._to_copy.default: 0, torch.ops.aten.copy_.default: 1}.get(func)
        if source is not None and args[source].device != out.device:
            self.copies += 1
        return out


def seconds_per_call(
    runs: dict[str, Callable[[ViewAugmentation], object]],
    views: tuple[ViewAugmentation, ...],
    device: torch.device,
    reps: int,
    calls: int,
) -> dict[str, float]:
    """Seconds per call of each of ``runs`` (``calls`` calls of each view in turn, the device's
    queue drained after them), the median of ``reps`` interleaved repetitions."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: allocator, caches
        for view in views:
            run(view)
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(calls):
                for view in views:
                    run(view)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append((time.perf_counter() - start) / (calls * len(views)))
    return {name: statistics.median(s) for name, s in seconds.items()}


def fixed_cost(
    engines: dict[str, ModuleType],
    views: tuple[ViewAugmentation, ...],
    device: torch.device,
    quick: bool,
) -> None:
    """Print the fixed cost per call (one view) of each engine (a ``directclr.augment``)."""
    reps, calls = (3, 10) if quick else (9, 40)
    meta = torch.device("meta")
    generator = torch.Generator().manual_seed(0)

    def row(label: str, seconds: dict[str, float]) -> str:
        return f"    {label:11s}" + "".join(
            f"{s * 1e6:{len(n) + 4},.0f} us" for n, s in seconds.items()
        )

    def whole_call(n: int, on: torch.device) -> dict[str, float]:
        images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8).to(on)
        runs = {
            name: lambda view, e=engine: e.augment(images, view, generator)
            for name, engine in engines.items()
        }
        return seconds_per_call(runs, views, on, reps, calls)

    print(f"Fixed cost per augment call: one view of {SIZE}x{SIZE} RGB uint8 images (the recipe's "
          f"two views in turn), median of {reps} interleaved repetitions of {calls} calls each"
          f"{' (--quick: rough)' if quick else ''}")  # fmt: skip
    print("  host side alone: the parameters drawn and packed for a device (this engine; the copy")
    print("  to the meta device, which moves no data, stands in for an accelerator's)")
    for n in (1, 256, 4096):

        def parameters(view: ViewAugmentation, n: int = n) -> object:
            config = view.scaled()
            return draw_parameters(n, 3, (SIZE, SIZE), (SIZE, SIZE), config, generator).to(meta)

        print(row(f"batch {n}", seconds_per_call({"": parameters}, views, meta, reps, calls)))
    print(f"  whole call on {device}:" + "".join(f"    {name}" for name in engines))
    batches = (8, 16, 32, 64)
    seconds = {n: whole_call(n, device) for n in batches}
    for n in batches:
        print(row(f"batch {n}", seconds[n]))
    for name in engines:
        slope, intercept = statistics.linear_regression(
            batches, [seconds[n][name] for n in batches]
        )
        print(f"  {name}: fixed cost {intercept * 1e6:,.0f} us per call + {slope * 1e6:,.1f} us "
              f"per image (least squares over these batches)")  # fmt: skip

    def dispatched(engine: ModuleType, view: ViewAugmentation, on: torch.device) -> Dispatches:
        images = torch.zeros(256, 3, SIZE, SIZE, dtype=torch.uint8, device=on)
        with Dispatches() as seen:
            engine.augment(images, view, torch.Generator().manual_seed(0))
        return seen

    for name, engine in engines.items():
        copies = [dispatched(engine, view, meta).copies for view in views]
        operations = [dispatched(engine, view, torch.device("cpu")).operations for view in views]
        print(f"  {name}, one call at batch 256, each view: {copies} host-to-device copies (to "
              f"the meta device), {operations} tensor operations dispatched (on cpu)")  # fmt: skip


def measure(alternatives: dict[str, Callable[[], int]], reps: int) -> dict[str, list[float]]:
    """Images/s of each alternative (a run that returns how many images it processed) in
    each of ``reps`` interleaved repetitions."""
    rates: dict[str, list[float]] = {name: [] for name in alternatives}
    for _ in range(reps):
        for name, run in alternatives.items():
            start = time.perf_counter()
            images = run()
            rates[name].append(images / (time.perf_counter() - start))
    return rates


def median_ratio(over: list[float], under: list[float]) -> tuple[float, float, float]:
    """The median, min and max over repetitions of each repetition's ``over / under``."""
    ratios = [a / b for a, b in zip(over, under, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test only")
    parser.add_argument("--device", default="cpu", help="device of the batched engines")
    parser.add_argument("--baseline", help="git revision whose engine to time beside this one")
    args = parser.parse_args()
    reps, batches, pil_images = (3, 1, 64) if args.quick else (15, 4, 256)
    device = torch.device(args.device)
    torch.set_num_threads(1)

    recipe = TwoViewAugmentation()
    views = (recipe.view1, recipe.view2)
    engines = {"this engine": directclr.augment}
    if args.baseline:
        engines = {f"at {args.baseline}": engine_at(args.baseline), **engines}
    fixed_cost(engines, views, device, args.quick)
    print()
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (batches * BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    tensors = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous().to(device)
    pil_pipelines = [pil_view(v, SIZE) for v in views]
    generator = torch.Generator().manual_seed(0)

    def engine() -> int:
        for batch in tensors.split(BATCH):
            for view in views:
                augment(batch, view, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(tensors)

    def pil() -> int:
        for array in pool[:pil_images]:
            image = Image.fromarray(array)
            for pipeline in pil_pipelines:
                pipeline(image)
        return pil_images

    # The PIL pipeline's ToTensor and GaussianBlur are torch ops: one thread, as in a worker.
    alternatives = {
        "engine (directclr.augment)": engine,
        "torchvision PIL, per image": pil,
    }
    try:
        import kornia

        kornia_pipelines = [kornia_view(v, SIZE).to(device) for v in views]

        def kornia_run() -> int:
            for batch in tensors.split(BATCH):
                floats = batch.float() / 255
                for pipeline in kornia_pipelines:
                    pipeline(floats)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return len(tensors)

        alternatives[f"kornia {kornia.__version__}"] = kornia_run
    except ImportError:
        print("kornia is not installed: not measured")

    measure(alternatives, 1)  # warm-up: allocator, thread pools, kernel caches
    runs = measure(alternatives, reps)
    rates = {name: statistics.median(r) for name, r in runs.items()}

    print(
        f"SimCLR two-view recipe on {SIZE}x{SIZE} RGB uint8 images; images/s counts an image "
        f"once for its two views; one CPU thread each; batched engines on {device} in "
        f"batches of {BATCH}; median of {reps} interleaved repetitions"
        f"{' (--quick: rough)' if args.quick else ''}"
    )
    for name, rate in rates.items():
        print(f"  {name:44s} {rate:10,.0f} images/s")
    pil = runs["torchvision PIL, per image"]
    for name in rates:
        if not name.startswith("torchvision"):
            ratio, low, high = median_ratio(runs[name], pil)
            print(f"  {name} / PIL: {ratio:.1f}x (median of {reps} repetitions' ratios; "
                  f"spread {low:.1f}-{high:.1f}x)")  # fmt: skip
    print(f"ratio={median_ratio(runs['engine (directclr.augment)'], pil)[0]:.2f}")


if __name__ == "__main__":
    main()
