"""What augmentation costs the pretraining loop: the project's loop against three references.

One model (directclr.backbones.SmallCNN at its default width, the directclr method), batch 256 of
28x28 RGB uint8 images, SimCLR's two-view recipe (TwoViewAugmentation's defaults), the same
loss (directclr.losses.paper_info_nce, the default) and optimizer (AdamW), in one process:

(a) the project's loop: ``directclr.training.pretrain`` on one batch of images for a few
    epochs, so its history's images/s is one step per epoch (the effective-rank probe at the
    end is not counted); it keeps the model and views channels_last, on CPU as on CUDA;
(b) a plain PyTorch loop fed by a torchvision DataLoader (2 workers) that makes the two views
    with the per-image PIL pipeline of the same recipe, as people write it for CIFAR (torch's
    default memory format);
(c) the ceiling of (a): the same plain loop in (a)'s memory format fed ready-made tensors, no
    augmentation at all;
(b') (b) in (a)'s memory format, so that a/b' isolates the data path.

(a) also trains its online linear probe, so it does a little more work than the others.
They run interleaved after a warm-up round, a few steps at a time; each reports the median of
its steps' images/s, so a machine shared with other work slows them alike. Each ratio is the
median over the rounds of that round's ratio (of the rounds' median images/s), printed with
its spread, so one noisy round does not decide. Prints
``ceiling/(b')`` (the most any augmentation engine could gain on this machine),
``data_path_ratio=<a/b'>``, ``efficiency=<a/c>`` (target >= 0.9: augmentation nearly free),
then last ``ratio=<a/b>`` (target >= 1.2: the project's loop against the usual one).

    python benchmarks/pretraining.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from directclr.losses import paper_info_nce
from directclr.models import build_model
from directclr.training import PretrainingConfig, pretrain

sys.path.insert(0, str(Path(__file__).parent))
from augmentation import pil_view  # noqa: E402

SIZE = 28
BATCH = 256
WORKERS = 2


class TwoViewImages(Dataset):
    """uint8 HWC images made into two PIL-pipeline views each, like torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, config: PretrainingConfig) -> None:
        self.images = images
        views = config.augmentation
        self.pipelines = [pil_view(views.view1, SIZE), pil_view(views.view2, SIZE)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(self.images[index])
        return self.pipelines[0](image), self.pipelines[1](image)


def plain_loop(
    config: PretrainingConfig, device: torch.device, mean, std, memory_format: torch.memory_format
):
    """One step of a plain PyTorch loop on two batches of views, in ``memory_format``:
    torch's default (as such loops are usually written) or channels_last (as pretrain does)."""
    cuda = device.type == "cuda"
    model = build_model(config, 3, mean, std, config.seed)
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    model.train()

    def step(view1: torch.Tensor, view2: torch.Tensor) -> None:
        views = torch.cat([view1, view2]).to(device, non_blocking=True)
        with autocast:
            _, z = model(views.contiguous(memory_format=memory_format))
        z1, z2 = z.float().chunk(2)  # the loss in float32, as the project's loop computes it
        loss = paper_info_nce(z1, z2, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(
    alternatives: dict[str, Callable[[], list[float]]], rounds: int
) -> dict[str, list[list[float]]]:
    """Per-step images/s of each alternative in each of ``rounds`` interleaved rounds.

    Each alternative runs a few steps and returns each step's images/s.
    """
    rates: dict[str, list[list[float]]] = {name: [] for name in alternatives}
    for _ in range(rounds):
        for name, run in alternatives.items():
            rates[name].append(run())
    return rates


def median_ratio(over: list[list[float]], under: list[list[float]]) -> str:
    """The median over rounds of each round's ratio of median images/s, with its spread."""
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(over, under, strict=True)]
    spread = f" (rounds {min(ratios):.3f}-{max(ratios):.3f})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.3f}{spread}"


def timed_steps(step: Callable[..., None], batches, device: torch.device) -> list[float]:
    """Run ``step`` on each item of ``batches``; images/s of each step, waiting for its batch
    included."""
    rates = []
    start = time.perf_counter()
    for views in batches:
        step(*views)
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        rates.append(BATCH / (now - start))
        start = now
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one step each: smoke test only")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    args = parser.parse_args()
    steps, rounds = (1, 1) if args.quick else (2, 5)
    device = torch.device(args.device)

    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (steps * BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    images = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(rng.integers(0, 10, len(pool)))
    mean = (images.float() / 255).mean(dim=(0, 2, 3)).tolist()
    std = (images.float() / 255).std(dim=(0, 2, 3)).tolist()
    config = PretrainingConfig(
        batch_size=BATCH, epochs=steps, warmup_epochs=0, rank_every=steps, device=args.device
    )

    def project_loop() -> list[float]:
        history = pretrain(images[:BATCH], labels[:BATCH], config, mean, std)[1]
        return history["images_per_s"].tolist()

    loader = DataLoader(
        TwoViewImages(pool, config), batch_size=BATCH, shuffle=True, num_workers=WORKERS,
        persistent_workers=True, drop_last=True, pin_memory=device.type == "cuda",
    )  # fmt: skip

    default_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def dataloader_loop(memory_format: torch.memory_format) -> Callable[[], list[float]]:
        # A fresh model each round, as pretrain builds one per call, and a fresh pass over the
        # loader: the workers' prefetch starts with the clock.
        def run() -> list[float]:
            return timed_steps(plain_loop(config, device, mean, std, memory_format), loader,
                               device)  # fmt: skip

        return run

    ready = [(images[i : i + BATCH].to(device).float() / 255) for i in range(0, len(pool), BATCH)]

    def no_augmentation() -> list[float]:
        step = plain_loop(config, device, mean, std, torch.channels_last)
        return timed_steps(step, [(batch, batch) for batch in ready], device)

    alternatives = {
        "(a) directclr.training.pretrain": project_loop,
        f"(b) plain loop, DataLoader ({WORKERS} workers), PIL": dataloader_loop(default_format),
        "(c) plain loop, ready-made tensors (ceiling)": no_augmentation,
        "(b') as (b), channels_last like (a)": dataloader_loop(torch.channels_last),
    }
    if not args.quick:
        measure(alternatives, 1)  # warm-up: worker processes, kernel caches, allocator
    runs = measure(alternatives, rounds)
    rates = {
        name: statistics.median(s for r in rounds_ for s in r) for name, rounds_ in runs.items()
    }

    print(
        f"SmallCNN (width {config.width}, {config.method}) on {SIZE}x{SIZE} RGB, batch {BATCH}, "
        f"{device}, {torch.get_num_threads()} torch threads; images/s counts an image once for "
        f"its two views; median over {rounds} interleaved rounds of {steps} steps"
        f"{' (--quick: rough)' if args.quick else ''}"
    )
    for name, rate in rates.items():
        print(f"  {name:52s} {rate:9,.1f} images/s")
    a, b, c, b_same_format = runs.values()
    print(
        "(b) is a plain loop as usually written (torch's default memory format on CPU); (a) "
        "and (c) use channels_last, as does (b'). a/b' is the data path alone."
    )
    print(f"ceiling/(b')={median_ratio(c, b_same_format)}: the most any augmentation engine "
          f"could reach")  # fmt: skip
    for name, (over, under) in {"data_path_ratio": (a, b_same_format), "efficiency": (a, c),
                                "ratio": (a, b)}.items():  # fmt: skip
        value, _, spread = median_ratio(over, under).partition(" ")
        if spread:
            print(f"  {name} per round: {spread.strip('()')}")
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
