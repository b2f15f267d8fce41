"""Epoch throughput of an image folder: decoding every epoch, the decoded-image cache, lightly.

Writes a folder of ``--images`` JPEGs (default 20,000; 10 classes of random shapes and
colours, ``--source-size`` 96 px) into a temporary folder, runs data_prep on it once
(``image_size`` 64, which also builds the cache), then measures epoch images/s of the train
split, batched into uint8 tensors, with no model:

* **decode**: the project's folder path without the cache (``data_prep.cache=false``): every
  JPEG read, decoded and resized in ``--workers`` DataLoader workers, every epoch;
* **cache**: the same batches read as rows of the cache (``pread`` of a shuffled, sorted
  batch of rows, one batch ahead in a thread; no workers);
* **lightly**: ``lightly.data.LightlyDataset(input_dir=...)`` with a torchvision
  Resize/CenterCrop/PILToTensor to 64 px in a DataLoader of ``--workers`` workers, when
  lightly is importable (``pip install -e ".[bench]"``); else it is skipped and said so.

The three run interleaved (decode, cache, lightly, decode, ...) ``--repeats`` times in one
process and each reports its median, so a machine shared with other work slows them alike.
Files are in the page cache for all three (they were just written): what is measured is
decoding against reading, not the disk. Then an epoch of the cache path runs in a fresh
process that reports its peak resident memory (VmHWM), to compare with the cache file's size:
the cache is never loaded whole. The last line is
``ratio=<cache images/s / decode images/s>``; target >= 5 at 64 px.

    python benchmarks/image_folder.py [--images 2000] [--workers 8] [--folder PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from directclr.batches import FolderBatches
from directclr.data import DataConfig, prepare

CLASSES = 10


def write_image(args: tuple[Path, int, int]) -> None:
    """One JPEG of class ``i % CLASSES``: a random background and a few random shapes."""
    path, i, size = args
    rng = np.random.default_rng(i)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        box = sorted(rng.integers(0, size, 2).tolist()), sorted(rng.integers(0, size, 2).tolist())
        xy = [box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = (i % CLASSES + int(rng.integers(0, 2))) % 3
        if shape == 0:
            draw.ellipse(xy, fill=fill)
        elif shape == 1:
            draw.rectangle(xy, fill=fill)
        else:
            draw.polygon([tuple(p) for p in rng.integers(0, size, (3, 2)).tolist()], fill=fill)
    image.save(path, quality=90)


def write_folder(root: Path, images: int, size: int, workers: int) -> None:
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    jobs = [(root / f"class{i % CLASSES:02d}" / f"{i:07d}.jpg", i, size) for i in range(images)]
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(write_image, jobs, chunksize=256)


def epoch_rate(batches: Iterable) -> float:
    """Images per second of one pass over ``batches`` of (uint8 images, labels...)."""
    start, n = time.perf_counter(), 0
    for batch in batches:
        images = batch[0]
        assert images.dtype == torch.uint8
        n += len(images)
    return n / (time.perf_counter() - start)


def lightly_epoch(root: Path, size: int, batch: int, workers: int) -> Callable[[int], Iterable]:
    import torchvision.transforms as T
    from lightly.data import LightlyDataset
    from torch.utils.data import DataLoader

    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
    dataset = LightlyDataset(input_dir=str(root), transform=transform)

    def epoch(e: int) -> Iterable:
        generator = torch.Generator().manual_seed(e)
        return DataLoader(dataset, batch_size=batch, shuffle=True, generator=generator,
                          num_workers=workers, drop_last=True)  # fmt: skip

    return epoch


def _status(field: str) -> int:
    """A field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def _cache_epoch_memory(manifest: dict, batch: int, queue) -> None:
    """In a fresh process: resident memory before and at the peak of one cache epoch."""
    source = FolderBatches(manifest, "train", batch, seed=0, num_workers=0)
    before = _status("VmRSS")
    n = sum(len(images) for images, _ in source.epoch(0))
    queue.put((n, before, _status("VmHWM")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--source-size", type=int, default=96)
    parser.add_argument("--size", type=int, default=64, help="training image size")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="write (or reuse) the folder here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="image_folder_bench_"))
    root = args.folder or work / "images"
    try:
        if not any(root.glob("class*/*.jpg")):
            start = time.perf_counter()
            write_folder(root, args.images, args.source_size, args.workers)
            print(f"wrote {args.images} JPEGs of {args.source_size} px in "
                  f"{time.perf_counter() - start:.1f} s to {root}")  # fmt: skip
        config = DataConfig(source="image_folder", root=str(root), image_size=args.size,
                            test_fraction=0.02, num_workers=args.workers,
                            cache_dir=str(work / "image_cache"))  # fmt: skip
        start = time.perf_counter()
        manifest, card = prepare(config)
        print(f"data_prep (decode once, build the cache): {time.perf_counter() - start:.1f} s; "
              f"{card['counts']['train']} train images at {args.size} px, {args.workers} "
              f"workers, batches of {args.batch}")  # fmt: skip
        start = time.perf_counter()
        prepare(config)
        print(f"data_prep rerun (hash the files, reuse the cache): "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        decoding = {k: v for k, v in manifest.items() if k != "cache"}
        sources = {
            "decode": FolderBatches(decoding, "train", args.batch, 0, args.workers).epoch,
            "cache": FolderBatches(manifest, "train", args.batch, 0, args.workers).epoch,
        }
        try:
            sources["lightly"] = lightly_epoch(root, args.size, args.batch, args.workers)
        except ImportError:
            print('lightly: skipped (not importable; pip install -e ".[bench]" adds it)')
        rates: dict[str, list[float]] = {name: [] for name in sources}
        for r in range(args.repeats):
            for name, epoch in sources.items():
                rates[name].append(epoch_rate(epoch(r)))
        median = {name: statistics.median(values) for name, values in rates.items()}
        for name, values in rates.items():
            print(f"{name:8s} {median[name]:10.0f} images/s  (epochs: "
                  f"{', '.join(f'{v:.0f}' for v in values)})")  # fmt: skip

        queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(
            target=_cache_epoch_memory, args=(manifest, args.batch, queue)
        )
        child.start()
        n, before, peak = queue.get()
        child.join()
        file_size = (Path(manifest["cache"]["path"]) / "images.npy").stat().st_size
        print(f"cache epoch in a fresh process ({n} images): resident {before / 2**20:.0f} MiB "
              f"before, peak {peak / 2**20:.0f} MiB (+{(peak - before) / 2**20:.0f} MiB); "
              f"cache file {file_size / 2**20:.0f} MiB")  # fmt: skip
        if "lightly" in median:
            print(f"cache / lightly: {median['cache'] / median['lightly']:.1f}x")
        print(f"ratio={median['cache'] / median['decode']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
