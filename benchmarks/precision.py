"""bf16 autocast against float32 on this CPU: what it gains in speed, what it costs the probe.

Trains the same run in float32 (``precision: fp32``) and in bf16 autocast (``precision:
bf16``; the loss, the online probe, the spectrum and the encoded r stay float32) for 3 seeds
each, with the library (``directclr.training.pretrain``, no Kedro), on two data sets:

* digits: the default run -- ``conf/base/parameters_pretraining.yml``'s recipe with the
  ``directclr`` run's changes (SmallCNN width 64, d0 64, 20 epochs, batch 256, AdamW, the
  paper's loss) on the bundled 8x8 digits, split as data_prep does;
* peer: ``benchmarks/peer.py``'s images (28x28 grey digits with affine jitter) and settings
  (the same recipe with NT-Xent, SmallCNN width 32), ``--peer-epochs`` epochs.

The effective-rank records are taken once, at the end (``rank_every`` = epochs): they never
change what is trained, only what is recorded. Runs alternate (fp32, bf16; then bf16, fp32)
one pair per seed. Each data set prints the probe's top-1 (``directclr.evaluation.linear_probe``
on the frozen float32 r of train and test) by seed, mean +- sd per precision, the paired
difference (bf16 - fp32) and whether it stays within the seed spread (the mean difference not
below minus the larger sd), and training images/s (median over epochs) of each. Also prints
what ``precision: auto`` resolves to here and why.

Then speed alone, by image side: the default run's model and recipe trained for 2 epochs on
``--side-images`` generated images at each side of ``--sides``, fp32 and bf16 alternated
over ``--rounds`` rounds, printing the median per-round ratio of the second epochs' images/s
(the first pays one-time set-up) with its range. This is what ``auto``'s rule on CPU
(bf16 from ``CPU_BF16_MIN_SIDE`` pixels a side) rests on. The last line is
``ratio=<bf16 images/s / fp32 images/s>`` on the default run's digits.

    python benchmarks/precision.py [--quick] [--seeds 3] [--peer-train 3000]
                                   [--peer-test 2000] [--peer-epochs 2]
                                   [--sides 8 12 16 24 32] [--side-images 1024] [--rounds 3]
                                   [--only-sides]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from directclr.data import DataConfig, channel_stats, prepare
from directclr.devices import resolve_precision
from directclr.training import PretrainingConfig, pretrain

sys.path.insert(0, str(Path(__file__).parent))
from peer import (  # noqa: E402
    BATCH,
    WIDTH,
    mean_sd,
    peer_config,
    peer_data,
    probe_top1,
    recipe_config,
    spread,
)

PRECISIONS = ("fp32", "bf16")


def compare(
    name: str, data: dict[str, torch.Tensor], config: PretrainingConfig, seeds: int
) -> float:
    """Train ``config`` on ``data`` in both precisions for each seed; print the probe and the
    speed of each; return bf16's images/s over fp32's."""
    mean, std = channel_stats(data["train_images"])
    top1: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    clock = time.perf_counter()
    for seed in range(seeds):
        order = PRECISIONS if seed % 2 == 0 else PRECISIONS[::-1]
        for precision in order:
            run = config.model_copy(update={"seed": seed, "precision": precision})
            model, history, _ = pretrain(data["train_images"], data["train_labels"], run, mean, std)
            rates[precision].extend(history["images_per_s"].tolist())
            top1[precision].append(probe_top1(model, data))
    n_train, n_test = len(data["train_images"]), len(data["test_images"])
    side = data["train_images"].shape[-1]
    print(
        f"{name}: {side}x{side}, {n_train} train / {n_test} test images; SmallCNN width "
        f"{config.width}, {config.method} d0={config.d0}, loss {config.loss}, {config.epochs} "
        f"epochs, batch {config.batch_size}, {config.optimizer} lr {config.lr:g}; {seeds} "
        f"seeds ({time.perf_counter() - clock:.0f} s)"
    )
    for seed in range(seeds):
        fp32, bf16 = top1["fp32"][seed], top1["bf16"][seed]
        print(f"  seed {seed}: fp32 {fp32:.4f}  bf16 {bf16:.4f}  difference {bf16 - fp32:+.4f}")
    difference = [b - f for b, f in zip(top1["bf16"], top1["fp32"], strict=True)]
    seed_spread = spread(top1["fp32"], top1["bf16"])
    within = statistics.mean(difference) >= -seed_spread
    print(f"  probe top-1 fp32 {mean_sd(top1['fp32'])}")
    print(f"  probe top-1 bf16 {mean_sd(top1['bf16'])}")
    print(f"  paired difference (bf16 - fp32) {mean_sd(difference)}: "
          f"{'within' if within else 'OUTSIDE'} the seed spread "
          f"(largest sd {seed_spread:.4f})")  # fmt: skip
    fp32_rate, bf16_rate = (statistics.median(rates[p]) for p in PRECISIONS)
    print(f"  training images/s (median over {len(rates['fp32'])} epochs): fp32 "
          f"{fp32_rate:,.1f}  bf16 {bf16_rate:,.1f}  "
          f"bf16/fp32 {bf16_rate / fp32_rate:.3f}")  # fmt: skip
    return bf16_rate / fp32_rate


def speed_by_side(sides: list[int], images: int, rounds: int, quick: dict) -> None:
    """bf16/fp32 training speed of the default run's model at each image side (see above)."""
    print(f"speed by image side: {images} generated images, 2 epochs, the default run's model "
          f"and recipe; fp32 and bf16 alternated, {rounds} rounds")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    for side in sides:
        data = torch.randint(0, 256, (images, 1, side, side), dtype=torch.uint8,
                             generator=generator)  # fmt: skip
        labels = torch.randint(0, 10, (images,), generator=generator)
        mean, std = channel_stats(data)
        rate: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for round_ in range(rounds):
            for precision in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
                run = recipe_config(device="cpu", rank_every=2, **{**quick, "epochs": 2,
                                    "warmup_epochs": 1, "precision": precision})  # fmt: skip
                _, history, _ = pretrain(data, labels, run, mean, std)
                rate[precision].append(float(history["images_per_s"].iloc[-1]))
        ratios = [b / f for b, f in zip(rate["bf16"], rate["fp32"], strict=True)]
        fp32, bf16 = (statistics.median(rate[p]) for p in PRECISIONS)
        print(f"  {side:>3} px: fp32 {fp32:8,.1f}  bf16 {bf16:8,.1f} images/s; bf16/fp32 "
              f"median {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: smoke test only")
    parser.add_argument("--seeds", type=int, default=None, help="paired runs (3)")
    parser.add_argument("--peer-train", type=int, default=3000)
    parser.add_argument("--peer-test", type=int, default=2000)
    parser.add_argument("--peer-epochs", type=int, default=2)
    parser.add_argument("--sides", type=int, nargs="+", default=[8, 12, 16, 24, 32])
    parser.add_argument("--side-images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only-sides", action="store_true", help="the speed by side alone")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 3)

    quick_note = " (--quick: rough)" if args.quick else ""
    print(f"{torch.get_num_threads()} torch threads{quick_note}")
    for side in (8, 28):
        bf16, why = resolve_precision("auto", torch.device("cpu"), side)
        print(f"precision: auto resolves to {'bf16 autocast' if bf16 else 'fp32'} here for "
              f"{side} px images: {why}")  # fmt: skip

    quick = {"epochs": 2, "warmup_epochs": 1, "width": 8} if args.quick else {}
    if args.only_sides:
        speed_by_side(args.sides, args.side_images, args.rounds, quick)
        return
    digits, _ = prepare(DataConfig())
    epochs = quick.get("epochs", recipe_config().epochs)
    digits_config = recipe_config(device="cpu", rank_every=epochs, **quick)
    ratio = compare("digits, the default run", digits, digits_config, seeds)

    if args.quick:
        train, test, epochs, batch, width = 256, 256, 1, 64, 8
    else:
        train, test, epochs, batch, width = (
            args.peer_train,
            args.peer_test,
            args.peer_epochs,
            BATCH,
            WIDTH,
        )
    config = peer_config(epochs, batch, 0, "fp32", width=width)
    compare("peer.py's images", peer_data(train, test), config, seeds)
    sides = [8, 16] if args.quick else args.sides
    speed_by_side(sides, 256 if args.quick else args.side_images, args.rounds, quick)
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
