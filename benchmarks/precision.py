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
what ``precision: auto`` resolves to here and why. The last line is
``ratio=<bf16 images/s / fp32 images/s>`` on the default run's digits.

    python benchmarks/precision.py [--quick] [--seeds 3] [--peer-train 3000]
                                   [--peer-test 2000] [--peer-epochs 2]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: smoke test only")
    parser.add_argument("--seeds", type=int, default=None, help="paired runs (3)")
    parser.add_argument("--peer-train", type=int, default=3000)
    parser.add_argument("--peer-test", type=int, default=2000)
    parser.add_argument("--peer-epochs", type=int, default=2)
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 3)

    bf16, why = resolve_precision("auto", torch.device("cpu"))
    quick_note = " (--quick: rough)" if args.quick else ""
    print(f"precision: auto resolves to {'bf16 autocast' if bf16 else 'fp32'} here: {why}; "
          f"{torch.get_num_threads()} torch threads{quick_note}")  # fmt: skip

    digits, _ = prepare(DataConfig())
    quick = {"epochs": 2, "warmup_epochs": 1, "width": 8} if args.quick else {}
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
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
