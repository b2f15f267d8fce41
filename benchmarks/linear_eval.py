"""Time the linear_eval probe on CIFAR-sized frozen features: 50,000 x 2,048 float32.

The probe is the stage's own (StandardScaler + multinomial LogisticRegression, C chosen
from the default grid on a validation split of train, then refit on all of train). The
features are synthetic but shaped like a ResNet-50 representation: non-negative (post-ReLU)
and of low effective rank, with 10 classes. Target: seconds <= 120 on 2 CPU cores.

Prints what was measured, then `seconds=<number>` last.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from directclr.evaluation import LinearEvalConfig, linear_probe


def features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent_dim = 64
    centres = rng.standard_normal((classes, latent_dim)) * 0.4
    mixing = rng.standard_normal((latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
    y = rng.integers(0, classes, n)
    latent = (centres[y] + rng.standard_normal((n, latent_dim))).astype(np.float32)
    x = latent @ mixing + 0.1 * rng.standard_normal((n, dim), dtype=np.float32)
    return np.maximum(x, 0, out=x), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="5,000 x 256, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.dim = 5_000, 1_000, 256

    x, y = features(args.train + args.test, args.dim, 10, seed=0)
    config = LinearEvalConfig()
    start = time.perf_counter()
    result = linear_probe(
        x[: args.train], y[: args.train], x[args.train :], y[args.train :],
        tuple(config.C_grid), config.validation_fraction, config.max_iter, config.tol,
        config.seed,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(
        f"linear probe on {args.train:,} x {args.dim:,} float32 features (test {args.test:,}), "
        f"C grid {config.C_grid} on a {config.validation_fraction:.0%} validation split, "
        f"refit on all: chose C={result.C}, test top-1 {result.top1:.4f}; "
        f"{os.cpu_count()} CPUs visible"
    )
    print(f"seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
