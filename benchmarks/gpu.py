"""The project on one GPU: its training against a bare loop, what augmentation and the
per-epoch measures cost, the spectrum against its floor, and lightly beside them.

One process, one model: ResNet-18 with the CIFAR stem (``backbone: resnet18``), DirectCLR
(d0 = 64) on 32x32 RGB uint8 images made here (10,240 by default: 40 steps of 256, 10 of
1,024), bf16 autocast and channels_last on both sides, fused AdamW, the paper's loss. Every
ratio is the median over interleaved rounds (A, B, A, B, ...) of that round's ratio, printed
with its spread; images/s counts an image once for its two views.

1. **Training, at batch 256 and 1,024.** (a) ``directclr.training.pretrain`` with its
   augmentation on, over 3 epochs of the images, the history's images/s of epochs 2 and 3
   (training steps only; epoch 1 warms cuDNN's autotuner up); (b) a bare eager loop: the
   same model, loss and optimizer on two ready-made view tensors already on the GPU, no
   augmentation, no online probe, one epoch's steps timed as one block. ``project/bare`` (target
   >= 0.95). MFU: FLOPs per image of a bare step (forward and backward of both views, counted
   by ``torch.utils.flop_counter``) times images/s over the GPU's dense bf16 peak
   (``--peak-tflops``; known for H100 and H200 SXM: 989).
2. **Augmentation's share of a step**: both views of one batch by ``directclr.augment``
   (synchronised) over the time of one step of (a).
3. **Per-epoch measures' share of wall time**, at 10,240 images per epoch and the defaults
   (ranks and spectrum every epoch, LiDAR on 64 images x 4 views): the time spent in the
   end-of-epoch measures (synchronised) over the whole ``pretrain`` call (target <= 0.10).
4. **The spectrum** stage's analysis of 50,000 x 2,048 float32 vectors against one float32
   X.T @ X, memory and agreement with the CPU (``benchmarks/spectrum.py --device cuda``, the
   vectors on the GPU, then with ``--from-host``, the vectors on the host as the stage reads
   them; targets ratio <= 3, memory <= 2x the matrix, eigenvalues within 1e-10).
5. **lightly** (``pip install -e '.[bench]'``; skipped when it is not installed): its
   ``SimCLRTransform`` per PIL image in a DataLoader (``--workers``), the same model's
   backbone into ``DirectCLRLoss``, the same optimizer, bf16 autocast, channels_last;
   ``project/lightly`` at batch 256. Its recipe is view 1's for both views with one blur
   probability (0.55, the mean of the pair's) and no solarisation: ``SimCLRTransform`` cannot
   make the project's asymmetric pair.

Not measured here: the training step captured as a CUDA graph (not built: it would have to
be built and checked on a GPU).

Needs a CUDA GPU and the project's runtime dependencies (torch, torchvision, numpy, scipy,
pandas, pydantic, threadpoolctl; not Kedro). Under 5 minutes on one H100-class GPU.

    python benchmarks/gpu.py [--peak-tflops 989] [--workers 8] [--rounds 3]
    python benchmarks/gpu.py --device cpu --quick      # a smoke run of every section on CPU
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import directclr.training.loop as training_loop
from directclr.augment import augment
from directclr.models import build_model
from directclr.training import PretrainingConfig, pretrain

sys.path.insert(0, str(Path(__file__).parent))
from peer import lightly_transform  # noqa: E402
from pretraining import plain_loop  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZE, CHANNELS = 32, 3
MEAN, STD = [0.5] * CHANNELS, [0.25] * CHANNELS
# Dense bf16 peaks (no sparsity), from NVIDIA's data sheets, by words of the device's name;
# the first that matches wins (an "H100" that is neither PCIe nor NVL is the SXM part).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0}  # fmt: skip


def images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images with some structure (smooth blobs of colour, 10 classes)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    coarse = (
        torch.rand(count, CHANNELS, 4, 4, generator=generator) + labels[:, None, None, None] / 10
    )
    x = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).to(torch.uint8), labels


def config(batch: int, epochs: int, device: str, **extra) -> PretrainingConfig:
    return PretrainingConfig(
        method="directclr", backbone="resnet18", d0=64, batch_size=batch, epochs=epochs,
        warmup_epochs=1, device=device, precision="bf16" if device == "cuda" else "fp32",
        resume=False, **extra,
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BareLoop:
    """The bare eager loop (``benchmarks/pretraining.py``'s plain loop, in channels_last): the
    model, loss and optimizer on two ready-made view tensors already on the device."""

    def __init__(self, settings: PretrainingConfig, device: torch.device) -> None:
        self.device = device
        self.batch = settings.batch_size
        self.train_step = plain_loop(settings, device, MEAN, STD, torch.channels_last)
        generator = torch.Generator().manual_seed(1)
        shape = (self.batch, CHANNELS, SIZE, SIZE)
        self.views = [torch.rand(shape, generator=generator).to(device) for _ in range(2)]

    def step(self) -> None:
        self.train_step(*self.views)

    def images_per_s(self, steps: int) -> float:
        self.step()
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return steps * self.batch / (time.perf_counter() - start)

    def flops_per_image(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.step()
        return counter.get_total_flops() / self.batch


def project_images_per_s(data, labels, settings: PretrainingConfig) -> tuple[float, float]:
    """The project's training images/s (median of the epochs after the first) and the share
    of the whole call's wall time spent in the end-of-epoch measures."""
    device = torch.device(settings.device)
    measures = 0.0
    original = training_loop.end_of_epoch_measures

    def timed(*args, **kwargs):
        nonlocal measures
        sync(device)
        start = time.perf_counter()
        result = original(*args, **kwargs)
        sync(device)
        measures += time.perf_counter() - start
        return result

    training_loop.end_of_epoch_measures = timed
    try:
        start = time.perf_counter()
        _, history, _ = pretrain(data, labels, settings, MEAN, STD)
        wall = time.perf_counter() - start
    finally:
        training_loop.end_of_epoch_measures = original
    rates = history["images_per_s"].tolist()
    return statistics.median(rates[1:] or rates), measures / wall


def augmentation_seconds(data: torch.Tensor, settings: PretrainingConfig, reps: int) -> float:
    """Seconds for both views of one batch (median of ``reps``)."""
    device = torch.device(settings.device)
    batch = data[: settings.batch_size].to(device)
    generator = torch.Generator().manual_seed(0)
    views = settings.augmentation
    times = []
    for _ in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        augment(batch, views.view1, generator)
        augment(batch, views.view2, generator)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def median_spread(values: list[float]) -> str:
    spread = f" (rounds {min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.3f}{spread}"


def lightly_images_per_s(data, labels, settings: PretrainingConfig, workers: int) -> float:
    """lightly's pipeline on the same model and images (``SimCLRTransform`` set to the recipe
    by ``benchmarks/peer.py``): images/s of its second epoch."""
    import numpy as np
    from lightly.loss import DirectCLRLoss
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    device = torch.device(settings.device)
    transform, _ = lightly_transform(settings, MEAN, STD, SIZE)

    class Images(Dataset):
        def __init__(self) -> None:
            self.arrays = data.permute(0, 2, 3, 1).numpy()

        def __len__(self) -> int:
            return len(self.arrays)

        def __getitem__(self, index: int):
            return transform(Image.fromarray(np.ascontiguousarray(self.arrays[index])))

    loader = DataLoader(
        Images(), batch_size=settings.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )  # fmt: skip
    model = build_model(settings, CHANNELS, MEAN, STD, settings.seed)
    backbone = model.backbone.to(device, memory_format=torch.channels_last).train()
    criterion = DirectCLRLoss(loss_dim=settings.d0, temperature=settings.temperature)
    optimizer = torch.optim.AdamW(
        backbone.parameters(), lr=1e-3, fused=device.type == "cuda" or None
    )
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    rate = 0.0
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        for x0, x1 in loader:
            x0 = x0.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            x1 = x1.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with autocast:
                r0, r1 = backbone(x0), backbone(x1)
            loss = criterion(r0.float(), r1.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        rate = len(loader) * settings.batch_size / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run only")
    parser.add_argument("--images", type=int, default=10_240)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--workers", type=int, default=8, help="lightly's DataLoader workers")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run on one, or smoke-test with --device cpu --quick")
    batches = (256, 1024)
    if args.quick:
        args.images, args.rounds, batches = 64, 1, (16, 32)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    data, labels = images(args.images)
    print(f"{name}; torch {torch.__version__}; ResNet-18 (CIFAR stem), {SIZE}x{SIZE} RGB, "
          f"{args.images:,} images, {args.rounds} interleaved rounds")  # fmt: skip

    # 1-3: training, augmentation, measures
    quiet = {"rank_every": 1_000, "lidar_samples": 0}  # measures only at the last epoch
    headline = {}
    for batch in batches:
        project, bare = [], []
        loop = BareLoop(config(batch, 1, args.device), device)
        steps = max(1, args.images // batch)
        for _ in range(args.rounds):
            rate, _ = project_images_per_s(data, labels, config(batch, 3, args.device, **quiet))
            project.append(rate)
            bare.append(loop.images_per_s(steps))
        ratios = [p / b for p, b in zip(project, bare, strict=True)]
        flops = loop.flops_per_image()
        augment_s = augmentation_seconds(data, config(batch, 1, args.device), reps=10)
        step_s = batch / statistics.median(project)
        print(f"batch {batch}: project {statistics.median(project):,.0f} images/s, bare loop "
              f"{statistics.median(bare):,.0f}; {flops / 1e9:.2f} GFLOP per image")  # fmt: skip
        if peak:
            for label, rates in (("project", project), ("bare", bare)):
                print(f"  MFU {label}: {statistics.median(rates) * flops / (peak * 1e12):.1%} "
                      f"of {peak:g} TFLOP/s")  # fmt: skip
        print(f"  augmentation's share of a step: {augment_s / step_s:.1%} "
              f"({augment_s * 1e3:.2f} ms of {step_s * 1e3:.2f} ms)")  # fmt: skip
        print(f"  project/bare: {median_spread(ratios)} (target >= 0.95)")
        headline[batch] = statistics.median(ratios)

    shares = [
        project_images_per_s(data, labels, config(batches[0], 3, args.device))[1]
        for _ in range(args.rounds)
    ]
    print(f"per-epoch measures (defaults: every epoch, LiDAR 64 x 4) at {args.images:,} images "
          f"per epoch: {median_spread(shares)} of the wall time (target <= 0.10)")  # fmt: skip

    # 4: the spectrum, in a process of its own (its memory is measured from a clean start):
    # the vectors on the GPU, then on the host as the spectrum stage reads them
    for where in ([], ["--from-host"]):
        command = [sys.executable, str(HERE / "spectrum.py"), f"--device={args.device}", *where]
        done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True,
                              text=True)  # fmt: skip
        lines = (done.stdout if done.returncode == 0 else done.stdout + done.stderr).strip()
        failed = "" if done.returncode == 0 else f" (failed, exit {done.returncode})"
        print(f"spectrum {' '.join(where)}{failed}:\n  " + "\n  ".join(lines.splitlines()))

    # 5: lightly
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("lightly: not installed (pip install -e '.[bench]'); skipped")
    else:
        batch = batches[0]
        rates, lightly_rates = [], []
        for _ in range(args.rounds):
            rates.append(
                project_images_per_s(data, labels, config(batch, 3, args.device, **quiet))[0]
            )
            lightly_rates.append(lightly_images_per_s(data, labels, config(batch, 1, args.device),
                                                      args.workers))  # fmt: skip
        ratios = [p / q for p, q in zip(rates, lightly_rates, strict=True)]
        print(f"lightly at batch {batch} ({args.workers} workers): "
              f"{statistics.median(lightly_rates):,.0f} images/s; project/lightly "
              f"{median_spread(ratios)}")  # fmt: skip
    print(" ".join(f"ratio_{b}={r:.3f}" for b, r in headline.items()))


if __name__ == "__main__":
    main()
