"""The project against lightly, the library a researcher would otherwise train DirectCLR with.

Both train the same DirectCLR model on the same images and are scored by the same probe:

* images: scikit-learn's bundled 8x8 digits, each drawn many times upscaled to 28x28 grey with
  a random affine jitter (rotation, scale, shear, shift) -- train images from the project's
  train split of the digits, test images from its test split (``--train``/``--test``);
* model: the project's SmallCNN (``build_model``, the same initial weights for a seed; width
  32 by default, half the recipe's, so that the run fits in ten minutes on 2 cores), the
  loss on r[:, :d0] with no projection head: ``directclr.losses.info_nce`` (``loss: ntxent``)
  in the project, ``lightly.loss.DirectCLRLoss(loss_dim=d0)`` in lightly. Both are SimCLR's
  NT-Xent: every one of the 2N views is an anchor, against its positive and the 2N - 2 other
  views of both halves, at the same temperature, averaged over the 2N anchors;
* optimisation: the optimizer ``directclr.optim.build_optimizer`` builds for both (the
  recipe's AdamW, lr, weight decay), the same warmup + cosine schedule
  (``directclr.optim.learning_rate``), the same epochs and batch;
* augmentation: the recipe of ``conf/base/parameters_pretraining.yml`` (its 8x8-digits views);
  lightly's ``SimCLRTransform`` set to it as far as its parameters reach (the differences
  are printed);
* the probe: the project's linear probe (``directclr.evaluation.linear_probe``) on the frozen
  r (``directclr.models.encode``, float32) of the train and test images, for both.

The project trains with ``directclr.training.pretrain`` on the uint8 tensors (augmentation
batched on the device, channels_last, ``precision`` as set: ``auto`` by default). lightly
trains as its documentation shows: ``SimCLRTransform`` per PIL image in a torchvision-style
Dataset, a ``DataLoader`` with the best of 0, 1 or 2 workers on this machine (a few batches
of each are timed first), and a plain loop that forwards the two views and steps the
optimizer (float32, torch's default memory format, as in lightly's examples).

Runs alternate (project, lightly; then lightly, project; ...), one pair per seed, after a
warm-up. images/s counts an image once for its two views, over the training steps only
(the project's history column; lightly's epochs timed the same way); each reports the median
over all its epochs. Then the probe's top-1 of each, mean +- sd over the seeds, and the paired
difference. The last line is ``ratio=<project images/s / lightly images/s>``; target >= 2.0,
with the project's probe not below lightly's beyond the seed spread.

Needs the optional extra ``bench`` (``pip install -e '.[bench]'``: lightly).

    python benchmarks/peer.py [--quick] [--train 3000] [--test 2000] [--epochs 1]
                              [--seeds 3] [--width 32] [--precision auto|fp32|bf16]
                              [--workers 0|1|2]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from directclr.augment import ViewAugmentation
from directclr.data import DataConfig, channel_stats, prepare
from directclr.devices import resolve_precision
from directclr.evaluation import linear_probe
from directclr.models import ContrastiveModel, build_model, encode
from directclr.optim import build_optimizer, learning_rate, scaled_lr
from directclr.training import PretrainingConfig, merge_settings, pretrain

ROOT = Path(__file__).resolve().parents[1]
SIZE = 28
WORKER_CHOICES = (0, 1, 2)
# The defaults: small enough that the whole run (3 seeds of both, the probes) takes under ten
# minutes on 2 shared CPU cores; SmallCNN at half the recipe's width for the same reason.
TRAIN, TEST, EPOCHS, SEEDS, BATCH, WIDTH = 3000, 2000, 1, 3, 256, 32


# ---------------------------------------------------------------------------------------------
# The settings and the images


def recipe_config(run: str = "directclr", **overrides) -> PretrainingConfig:
    """The default run's settings: ``conf/base/parameters_pretraining.yml``'s shared recipe
    with ``run``'s own changes laid over it (as Kedro does), then ``overrides``."""
    parameters = yaml.safe_load((ROOT / "conf/base/parameters_pretraining.yml").read_text())
    settings = merge_settings(parameters["pretraining"], parameters[run]["pretraining"])
    return PretrainingConfig.model_validate(merge_settings(settings, overrides))


def jittered_digits(
    images: torch.Tensor, labels: torch.Tensor, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uint8 (N, 1, 28, 28) images made from the 8x8 uint8 ``images``: each source
    digit is used in turn (in a shuffled order), placed in the central 20x20 pixels and given
    its own random rotation (+-15 degrees), scale (0.85-1.1), shear (+-0.15) and shift (+-2 px),
    resampled bilinearly."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([
        torch.randperm(len(images), generator=generator)
        for _ in range(math.ceil(count / len(images)))
    ])[:count]  # fmt: skip

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(count).uniform_(low, high, generator=generator)

    angle = uniform(-15, 15) * math.pi / 180
    scale = uniform(0.85, 1.1)
    shear = uniform(-0.15, 0.15)
    shift = uniform(-2 / 14, 2 / 14), uniform(-2 / 14, 2 / 14)  # +-2 px on the [-1, 1] scale
    # affine_grid maps output coordinates to input ones: the inverse of rotate-shear-scale, with
    # the digit's 8 px side filling 20 of the output's 28.
    zoom = (SIZE / 20) / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = zoom * cos
    theta[:, 0, 1] = zoom * (-sin + shear * cos)
    theta[:, 1, 0] = zoom * sin
    theta[:, 1, 1] = zoom * (cos + shear * sin)
    theta[:, 0, 2], theta[:, 1, 2] = shift
    source = images[order].float() / 255
    grid = F.affine_grid(theta, [count, 1, SIZE, SIZE], align_corners=False)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out * 255).round().clamp(0, 255).to(torch.uint8), labels[order].clone()


def peer_data(train: int, test: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The benchmark's images: ``train`` from the project's train split of the digits,
    ``test`` from its test split (no source digit is in both), with their labels."""
    digits, _ = prepare(DataConfig())
    train_images, train_labels = jittered_digits(
        digits["train_images"], digits["train_labels"], train, seed
    )
    test_images, test_labels = jittered_digits(
        digits["test_images"], digits["test_labels"], test, seed + 1
    )
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def peer_config(epochs: int, batch: int, seed: int, precision: str, **extra) -> PretrainingConfig:
    """The recipe's directclr run on the benchmark's images, with SimCLR's NT-Xent (the form
    lightly's DirectCLRLoss computes), on CPU."""
    return recipe_config(
        epochs=epochs, batch_size=batch, seed=seed, precision=precision, loss="ntxent",
        device="cpu", warmup_epochs=min(recipe_config().warmup_epochs, epochs // 2),
        rank_every=epochs, **extra,
    )  # fmt: skip


def probe_top1(model: ContrastiveModel, data: dict[str, torch.Tensor]) -> float:
    """The shared probe: the project's linear probe on the frozen float32 r of train/test."""
    train_r, _ = encode(model, data["train_images"], device="cpu")
    test_r, _ = encode(model, data["test_images"], device="cpu")
    result = linear_probe(train_r, data["train_labels"], test_r, data["test_labels"])
    return result.top1


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def spread(*samples: list[float]) -> float:
    """The seed spread: the larger of the samples' standard deviations."""
    return max(statistics.stdev(s) if len(s) > 1 else 0.0 for s in samples)


# ---------------------------------------------------------------------------------------------
# lightly, as its documentation uses it


def lightly_transform(
    config: PretrainingConfig, mean: list[float], std: list[float], size: int = SIZE
):
    """lightly's ``SimCLRTransform`` set to the recipe's two views as far as it can be, for
    ``size`` px views, and the differences that remain."""
    from lightly.transforms import SimCLRTransform

    view1, view2 = config.augmentation.view1.scaled(), config.augmentation.view2.scaled()
    shared = (
        "crop_scale", "crop_ratio", "hflip_p", "brightness", "contrast", "saturation", "hue",
        "jitter_p", "grayscale_p", "blur_sigma",
    )  # fmt: skip
    differ = [name for name in shared if getattr(view1, name) != getattr(view2, name)]
    if differ:
        raise ValueError(f"SimCLRTransform makes both views alike; the recipe's differ in {differ}")
    blur_p = (view1.blur_p + view2.blur_p) / 2
    sigmas = (view1.blur_sigma[0] * size, view1.blur_sigma[1] * size)
    transform = SimCLRTransform(
        input_size=size,
        cj_prob=view1.jitter_p,
        cj_strength=1.0,
        cj_bright=view1.brightness,
        cj_contrast=view1.contrast,
        cj_sat=view1.saturation,
        cj_hue=view1.hue,
        min_scale=view1.crop_scale[0],
        random_gray_scale=view1.grayscale_p,
        gaussian_blur=blur_p,
        sigmas=sigmas,
        vf_prob=0.0,
        hf_prob=view1.hflip_p,
        rr_prob=0.0,
        normalize={"mean": list(mean), "std": list(std)},
    )
    differences = [
        f"blur probability: the recipe's views {view1.blur_p:g} and {view2.blur_p:g}; lightly "
        f"one for both, set to their mean {blur_p:g} (sigma {sigmas[0]:.3g}-{sigmas[1]:.3g} px "
        f"in both; the project's kernel has {_kernel(view1, size)} taps, PIL's its own radius)",
        f"solarisation: the recipe's view 2 at p={view2.solarize_p:g}, view 1 "
        f"{view1.solarize_p:g}; SimCLRTransform has none",
        f"crop: scale ({view1.crop_scale[0]:g}, {view1.crop_scale[1]:g}) in both, but lightly's "
        f"upper bound is always 1 and its aspect ratio torchvision's (3/4, 4/3); the recipe's "
        f"ratio is ({view1.crop_ratio[0]:.4g}, {view1.crop_ratio[1]:.4g})",
        "resampling: the project one bilinear grid_sample per view; torchvision's PIL resize",
        "BatchNorm: the project forwards both views as one batch of 2N; lightly's examples "
        "forward each view on its own (batch statistics over N)",
    ]
    return transform, differences


def _kernel(view: ViewAugmentation, size: int) -> int:
    from directclr.augment import blur_kernel_size

    return view.blur_kernel_size or blur_kernel_size(size, size)


class DigitImages(Dataset):
    """A torchvision-style dataset: uint8 grey images, each given to ``transform`` as a PIL
    image, with its label."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images[:, 0].numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def lightly_loader(dataset: Dataset, batch: int, workers: int, seed: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


class LightlyRun:
    """DirectCLR as lightly's examples train it: the backbone's output into DirectCLRLoss."""

    def __init__(self, config: PretrainingConfig, mean: list[float], std: list[float]) -> None:
        from lightly.loss import DirectCLRLoss

        # The project's model, for the same initial weights and for the shared probe: lightly
        # trains its backbone (the normalisation is the transform's), with no projection head.
        self.model = build_model(config, 1, mean, std, config.seed)
        self.backbone = self.model.backbone
        self.criterion = DirectCLRLoss(loss_dim=config.d0, temperature=config.temperature)
        self.base_lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
        self.optimizer = build_optimizer(
            config.optimizer, self.backbone, self.base_lr, config.weight_decay, config.momentum
        )
        self.config = config

    def step(self, views, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0, x1 = views
        z0, z1 = self.backbone(x0), self.backbone(x1)
        loss = self.criterion(z0, z1)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def train(self, loader: DataLoader) -> list[float]:
        """All the epochs; the images/s of each (training steps, loading included)."""
        config = self.config
        steps = len(loader)
        total, warmup = steps * config.epochs, steps * config.warmup_epochs
        self.backbone.train()
        rates, step = [], 0
        for _ in range(config.epochs):
            start = time.perf_counter()
            for views, _labels in loader:
                loss = self.step(views, learning_rate(step, total, warmup, self.base_lr))
                step += 1
            if not math.isfinite(float(loss)):
                raise FloatingPointError("lightly's loss became non-finite")
            rates.append(steps * config.batch_size / (time.perf_counter() - start))
        self.model.eval()
        return rates


def pick_workers(
    dataset: Dataset, config: PretrainingConfig, mean, std, batches: int
) -> tuple[int, dict[int, float]]:
    """The fastest of 0, 1 and 2 DataLoader workers for lightly's training step on this
    machine: ``batches`` timed steps each, after one untimed (workers starting)."""
    rates = {}
    for workers in WORKER_CHOICES:
        run = LightlyRun(config, mean, std)
        loader = lightly_loader(dataset, config.batch_size, workers, config.seed)
        iterator = iter(loader)
        run.step(next(iterator)[0], config.lr)
        start = time.perf_counter()
        for _ in range(batches):
            run.step(next(iterator)[0], config.lr)
        rates[workers] = batches * config.batch_size / (time.perf_counter() - start)
        del iterator, loader  # stop the workers before the next choice
    return max(rates, key=rates.get), rates


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run: smoke test only")
    parser.add_argument("--train", type=int, default=None, help=f"training images ({TRAIN})")
    parser.add_argument("--test", type=int, default=None, help=f"test images ({TEST})")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs of each run ({EPOCHS})")
    parser.add_argument("--seeds", type=int, default=None, help=f"paired runs ({SEEDS})")
    parser.add_argument("--batch", type=int, default=None, help=f"batch size ({BATCH})")
    parser.add_argument("--width", type=int, default=None, help=f"SmallCNN's width ({WIDTH})")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"),
        help="the project's precision (default auto, as a user runs it: on these 28x28 images "
        "bf16 on a CPU with native bf16, fp32 elsewhere). lightly runs float32, as its "
        "examples do",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, choices=WORKER_CHOICES, default=None,
        help="lightly's DataLoader workers (default: the fastest of 0, 1, 2 measured)",
    )  # fmt: skip
    args = parser.parse_args()
    defaults = (
        (256, 256, 1, 2, 64, 16) if args.quick else (TRAIN, TEST, EPOCHS, SEEDS, BATCH, WIDTH)
    )
    given = (args.train, args.test, args.epochs, args.seeds, args.batch, args.width)
    n_train, n_test, epochs, seeds, batch, width = (
        value if value is not None else default
        for value, default in zip(given, defaults, strict=True)
    )
    batch = min(batch, n_train)
    clock = time.perf_counter()

    data = peer_data(n_train, n_test)
    mean, std = channel_stats(data["train_images"])
    config = peer_config(epochs, batch, 0, args.precision, width=width)
    side = data["train_images"].shape[-1]
    bf16, why = resolve_precision(config.precision, torch.device("cpu"), side)
    transform, differences = lightly_transform(config, mean, std)
    dataset = DigitImages(data["train_images"], data["train_labels"], transform)

    if args.workers is None:
        workers, tried = pick_workers(dataset, config, mean, std, 1 if args.quick else 2)
        choice = ", ".join(f"{w}: {rate:,.1f}" for w, rate in tried.items())
        chose = f"the fastest measured ({choice} images/s)"
    else:
        workers, chose = args.workers, "as asked (--workers)"

    project_rates: list[float] = []
    lightly_rates: list[float] = []
    project_top1: list[float] = []
    lightly_top1: list[float] = []
    for seed in range(seeds):
        seeded = config.model_copy(update={"seed": seed})

        def run_project(seeded=seeded) -> None:
            model, history, _ = pretrain(
                data["train_images"], data["train_labels"], seeded, mean, std
            )
            project_rates.extend(history["images_per_s"].tolist())
            project_top1.append(probe_top1(model, data))

        def run_lightly(seeded=seeded) -> None:
            torch.manual_seed(seeded.seed)
            np.random.seed(seeded.seed)  # lightly's blur draws from numpy's global generator
            random.seed(seeded.seed)
            run = LightlyRun(seeded, mean, std)
            lightly_rates.extend(run.train(lightly_loader(dataset, batch, workers, seeded.seed)))
            lightly_top1.append(probe_top1(run.model, data))

        for run in (run_project, run_lightly) if seed % 2 == 0 else (run_lightly, run_project):
            run()

    project, lightly = statistics.median(project_rates), statistics.median(lightly_rates)
    differences_top1 = [p - q for p, q in zip(project_top1, lightly_top1, strict=True)]
    seed_spread = spread(project_top1, lightly_top1)
    print(
        f"DirectCLR (d0={config.d0}) on SmallCNN (width {config.width}), {SIZE}x{SIZE} grey "
        f"digits with affine jitter: {n_train} train / {n_test} test images, {epochs} "
        f"epoch(s), batch {batch}, {config.optimizer} lr {config.lr:g}, temperature "
        f"{config.temperature:g}, NT-Xent (2N-2 negatives); {seeds} seeds; CPU, "
        f"{torch.get_num_threads()} torch threads{' (--quick: rough)' if args.quick else ''}"
    )
    print(f"project path: {'bf16 autocast' if bf16 else 'float32'} ({why}); "
          f"loss, probe and spectrum float32")  # fmt: skip
    print(f"lightly path: float32, torch's default memory format, SimCLRTransform per image, "
          f"DataLoader with {workers} worker(s): {chose}")  # fmt: skip
    print("augmentation: lightly's SimCLRTransform against the project's recipe; differences:")
    for difference in differences:
        print(f"  - {difference}")
    print(f"images/s (median over {len(project_rates)} epochs each, alternated runs):")
    print(f"  project  directclr.training.pretrain   {project:9,.1f}")
    print(f"  lightly  SimCLRTransform + DataLoader   {lightly:9,.1f}")
    print("linear probe top-1 on frozen r (directclr.evaluation.linear_probe), by seed:")
    for seed, (p, q) in enumerate(zip(project_top1, lightly_top1, strict=True)):
        print(f"  seed {seed}: project {p:.4f}  lightly {q:.4f}  difference {p - q:+.4f}")
    print(f"  project {mean_sd(project_top1)}")
    print(f"  lightly {mean_sd(lightly_top1)}")
    print(f"  paired difference (project - lightly) {mean_sd(differences_top1)}")
    below = statistics.mean(differences_top1) < -seed_spread
    print(
        f"probe: the project is {'BELOW' if below else 'not below'} lightly beyond the seed "
        f"spread (largest sd over seeds {seed_spread:.4f})"
    )
    print(f"wall time {time.perf_counter() - clock:.0f} s")
    print(f"ratio={project / lightly:.3f}")


if __name__ == "__main__":
    main()
