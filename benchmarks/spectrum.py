"""Cost of the full collapse analysis against its floor, one float32 X.T @ X.

The analysis (directclr.analysis.embedding_spectrum + spectrum_metrics) gives both spectra
(covariance of the L2-normalised rows and their un-centred second moment), singular values of
the centred matrix, effective rank, RankMe, collapsed dimensions, the power-law fit and the
top-k variance share of a 50,000 x 2,048 float32 embedding matrix, as the spectrum stage
computes them: the Gram product in float64 (``--precision float32`` measures the float32
product instead), the eigenproblems in float64, on ``--device``. Any method that looks at
the covariance must form a d x d Gram matrix at least once, so the floor is one float32
``X.T @ X`` of the same matrix (torch, at torch's default matmul precision), timed in the same
process on the same machine. On a GPU the script also prints how far the eigenvalues computed
there are from the CPU's (target: 1e-10 relative).

Timing: the two run interleaved (product, analysis, product, ...) after a warm-up, and each
reports the median of its repetitions, so a machine shared with other work slows both alike.
Memory: a fresh child process builds the matrix, then runs the analysis once; its extra
memory is the peak resident set during the analysis (VmHWM, reset just before) minus the
resident set before it (psutil is not needed, and tracemalloc cannot see torch's or BLAS's
allocations). The target is a total peak of at most twice the matrix.

The last line is ``ratio=<analysis time / product time>``: the median over the repetitions of
each repetition's ratio (their spread is printed above it), so one noisy repetition does not
decide; target <= 1.5 on a CPU, <= 3 on a GPU.

    python benchmarks/spectrum.py [--quick] [--device cuda] [--precision float32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from directclr.analysis import embedding_spectrum, spectrum_metrics

MB = 1 << 20


def embeddings(rows: int, dim: int, device: str, seed: int = 0) -> torch.Tensor:
    """Non-negative embeddings with a power-law spectrum (like ReLU representations), made
    chunk by chunk so that building them needs no more memory than the matrix itself."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.75
    x = torch.empty(rows, dim, dtype=torch.float32, device=device)
    for start in range(0, rows, 4096):
        chunk = torch.randn(min(4096, rows - start), dim, generator=generator) * scale
        x[start : start + len(chunk)] = chunk.relu_()
    return x


PRECISION = "float64"  # the spectrum stage's (directclr.collapse.measure_collapse)


def analyse(x: torch.Tensor, precision: str = PRECISION, device: str | None = None) -> dict:
    return spectrum_metrics(embedding_spectrum(x, precision=precision, device=device))


def largest_difference(x: torch.Tensor) -> float:
    """The largest difference between the eigenvalues computed where ``x`` is and those the
    CPU computes (BLAS and LAPACK), relative to each eigenvalue, over the eigenvalues above
    1e-6 of the largest (below it, over the largest), of both spectra."""
    here = embedding_spectrum(x, precision=PRECISION)
    cpu = embedding_spectrum(x.cpu(), precision=PRECISION)
    worst = 0.0
    for a, b in ((here.eigenvalues, cpu.eigenvalues),
                 (here.uncentred_eigenvalues, cpu.uncentred_eigenvalues)):  # fmt: skip
        scale = np.maximum(b, 1e-6 * b.max())
        worst = max(worst, float(np.max(np.abs(a - b) / scale)))
    return worst


def product(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(rows: int, dim: int, device: str, precision: str, from_host: bool) -> None:
    """Print, as JSON, the matrix size and the analysis's peak memory on top of it."""
    x = embeddings(rows, dim, "cpu" if from_host else device)
    matrix_mb = x.numel() * x.element_size() / MB
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        analyse(x, precision, device)
        extra_mb = (torch.cuda.max_memory_allocated() - before) / MB
        kind = "CUDA memory allocated by torch" + (" (the matrix on the host)" if from_host else "")
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
        before = _status_kb("VmRSS")
        analyse(x, precision)
        extra_mb = (_status_kb("VmHWM") - before) / 1024
        kind = "resident set (VmHWM - VmRSS)"
    print(json.dumps({"matrix_mb": matrix_mb, "extra_mb": extra_mb, "kind": kind}))


def measure_memory(rows: int, dim: int, device: str, precision: str, from_host: bool) -> dict:
    command = [sys.executable, __file__, "--memory-child", f"--rows={rows}", f"--dim={dim}",
               f"--device={device}", f"--precision={precision}"]  # fmt: skip
    command += ["--from-host"] if from_host else []
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small matrix: smoke test only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2_048)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--precision", default=PRECISION, choices=["float64", "float32"])
    parser.add_argument(
        "--from-host",
        action="store_true",
        help="keep the vectors on the host and send them to --device chunk by chunk, as the "
        "spectrum stage does with the vectors it reads (the floor still runs on the device)",
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dim, args.reps = 5_000, 256, 3
    if args.memory_child:
        memory_child(args.rows, args.dim, args.device, args.precision, args.from_host)
        return

    memory = measure_memory(args.rows, args.dim, args.device, args.precision, args.from_host)
    x = embeddings(args.rows, args.dim, args.device)
    source = x.cpu() if args.from_host else x  # what the analysis reads
    product(x[:1024])  # warm-up: BLAS thread pools, allocator
    analyse(source[:1024], args.precision, args.device)
    _sync(args.device)
    times: dict[str, list[float]] = {"product": [], "analysis": []}
    runs = (
        ("product", lambda: product(x)),
        ("analysis", lambda: analyse(source, args.precision, args.device)),
    )
    for _ in range(args.reps):
        for name, run in runs:
            start = time.perf_counter()
            run()
            _sync(args.device)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    metrics = analyse(source, args.precision, args.device)

    print(
        f"{args.rows:,} x {args.dim:,} float32 embeddings "
        f"{'on the host, analysed on' if args.from_host else 'on'} {args.device}, "
        f"{torch.get_num_threads()} threads; {args.precision} Gram product; median of "
        f"{args.reps} interleaved repetitions"
        f"{' (--quick: rough)' if args.quick else ''}"
    )
    for name, label in (("product", "one float32 X.T @ X (floor)"),
                        ("analysis", "all spectrum metrics")):  # fmt: skip
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {label:32s} {median[name]:7.2f} s   (runs: {runs})")
    print(
        "  metrics: effective rank {effective_rank:.1f}, RankMe {rankme:.1f}, collapsed "
        "{collapsed_dimensions}, alpha {power_law_alpha:.3f} (R^2 {power_law_r2:.3f}), top-10 "
        "variance share {variance_share_top_k:.3f}".format(**metrics)
    )
    matrix, extra = memory["matrix_mb"], memory["extra_mb"]
    print(
        f"  memory ({memory['kind']}): matrix {matrix:.0f} MB, analysis peak {extra:.0f} MB on "
        f"top, total {(matrix + extra) / matrix:.2f}x the matrix (target <= 2)"
    )
    if args.device != "cpu":
        print(f"  eigenvalues on {args.device} against the CPU's (float64): largest relative "
              f"difference {largest_difference(x):.2e} (target <= 1e-10)")  # fmt: skip
    ratios = [a / p for a, p in zip(times["analysis"], times["product"], strict=True)]
    print(f"  analysis / product per repetition: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(spread {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    print(f"ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
