"""The decoded-image cache of an image folder: the same batches as decoding, reused while the
folder and size stay, rebuilt when they change, and never trusted half-written."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from directclr.batches import source_from_spec, training_batches
from directclr.data import DataConfig, iterate_batches, materialize, prepare
from directclr.data import folder as folder_module
from directclr.data.cache import ImageCache
from directclr.training import PretrainingConfig, pretrain


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """data_prep.cache_dir is relative to the working folder: keep the caches in tmp_path."""
    monkeypatch.chdir(tmp_path)


def write_jpegs(root: Path, n: int = 60, classes: int = 3) -> Path:
    """``n`` small JPEGs of random shapes in ``classes`` class folders, in assorted sizes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = int(rng.integers(14, 30)), int(rng.integers(14, 30))
        pixels = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        pixels[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, 3)
        path = root / f"c{i % classes}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    (root / "c0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


@pytest.fixture
def jpegs(tmp_path):
    return write_jpegs(tmp_path / "images")


def config(root: Path, **overrides) -> DataConfig:
    settings = {"image_size": 16, "num_workers": 0, **overrides}
    return DataConfig(source="image_folder", root=str(root), **settings)


def caches(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "02_intermediate" / "image_cache").iterdir())


def no_decoding(monkeypatch):
    def refuse(self, i):
        raise AssertionError("decoded a file")

    monkeypatch.setattr(folder_module._ScanFiles, "__getitem__", refuse)


def epochs(
    manifest, world: int = 1, rank: int = 0, workers: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    source = training_batches(manifest, batch_size=8, seed=3, num_workers=workers)
    return [batch for e in range(2) for batch in source.epoch(e, rank, world)]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_the_cache_gives_the_batches_and_the_card_that_decoding_gives(jpegs, tmp_path):
    cached, card = prepare(config(jpegs, val_fraction=0.2))
    decoded, card_decoded = prepare(config(jpegs, val_fraction=0.2, cache=False))
    assert card == card_decoded and card["skipped_count"] == 1
    assert "cache" not in decoded and "train_rows" not in decoded
    (folder,) = caches(tmp_path)
    assert cached["cache"]["path"] == str(Path("data/02_intermediate/image_cache") / folder.name)
    assert cached["cache"]["shape"] == [61, 3, 16, 16]  # every selected file has a row
    assert {k: v for k, v in cached.items() if k != "cache" and not k.endswith("_rows")}.keys() \
        == decoded.keys()  # fmt: skip
    for world, rank in ((1, 0), (2, 1)):
        assert_same_batches(epochs(cached, world, rank), epochs(decoded, world, rank))
    # Decoding in two workers that stay up between epochs: each epoch still gets its rows.
    assert_same_batches(epochs(cached), epochs(decoded, workers=2))
    for split in ("train", "val", "test"):
        assert torch.equal(materialize(cached, split), materialize(decoded, split))
        shuffled = [list(iterate_batches(m, split, 7, True, 5, drop_last=True))
                    for m in (cached, decoded)]  # fmt: skip
        assert_same_batches(*shuffled)
    a, b = training_batches(cached, 8, 3), training_batches(decoded, 8, 3)
    assert torch.equal(a.probe_batch(10, 1), b.probe_batch(10, 1))
    assert a.fingerprint() == b.fingerprint()  # a run resumes across the two
    respawned = source_from_spec(a.spec())  # as a spawned training process rebuilds it
    assert respawned.cache is not None and respawned.cache.folder == a.cache.folder
    assert_same_batches(list(respawned.epoch(1)), list(b.epoch(1)))


def test_training_from_the_cache_equals_training_from_decoding(jpegs):
    settings = PretrainingConfig(width=4, d0=8, epochs=2, batch_size=16, warmup_epochs=0,
                                 projector_hidden_dim=16, projector_dim=8,
                                 device="cpu")  # fmt: skip
    models = []
    for cache in (True, False):
        manifest, card = prepare(config(jpegs, cache=cache, image_size=8))
        source = training_batches(manifest, settings.batch_size, settings.seed, num_workers=0)
        model, history, _ = pretrain(
            source, None, settings, card["channel_mean"], card["channel_std"]
        )
        models.append((model.state_dict(), history["loss"].tolist()))
    (cached, loss_cached), (decoded, loss_decoded) = models
    assert loss_cached == loss_decoded
    assert all(torch.equal(cached[k], decoded[k]) for k in decoded)


def test_a_rerun_reuses_the_cache_without_decoding(jpegs, tmp_path, monkeypatch):
    manifest, card = prepare(config(jpegs))
    (folder,) = caches(tmp_path)
    written = (folder / "images.npy").stat().st_mtime_ns
    no_decoding(monkeypatch)
    again, card_again = prepare(config(jpegs))
    assert card_again == card and caches(tmp_path) == [folder]
    assert (folder / "images.npy").stat().st_mtime_ns == written
    assert again["cache"] == manifest["cache"]
    assert torch.equal(again["train_rows"], manifest["train_rows"])
    # Split differently, the same files reuse it too (rows, not splits, are cached).
    resplit, _ = prepare(config(jpegs, test_fraction=0.5))
    assert resplit["cache"] == manifest["cache"] and caches(tmp_path) == [folder]


def test_a_changed_file_an_added_file_or_a_new_size_rebuilds_the_cache(jpegs, tmp_path):
    manifest, _ = prepare(config(jpegs))
    keys = {manifest["cache"]["key"]}
    Image.new("RGB", (20, 20), (1, 2, 3)).save(jpegs / "c1" / "new.jpg")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(jpegs / "c2" / "002.jpg")  # modified
    for step in (
        lambda: None,  # the files above
        lambda: Image.new("RGB", (20, 20), (7, 7, 7)).save(jpegs / "c2" / "002.jpg"),
        lambda: None,  # another size, below
    ):
        step()
        size = 24 if len(keys) == 3 else 16
        manifest, _ = prepare(config(jpegs, image_size=size))
        assert manifest["cache"]["key"] not in keys
        keys.add(manifest["cache"]["key"])
        decoded, _ = prepare(config(jpegs, image_size=size, cache=False))
        assert torch.equal(materialize(manifest, "train"), materialize(decoded, "train"))
    assert len(caches(tmp_path)) == 4


def test_grey_folders_cache_grey_pixels(tmp_path):
    root = tmp_path / "grey"
    for i in range(12):
        grey = i % 4 != 0  # a grey majority, with a few colour files
        image = (
            Image.new("L", (18, 14), 20 * i) if grey else Image.new("RGB", (18, 14), (200, 9, i))
        )
        (root / f"k{i % 2}").mkdir(parents=True, exist_ok=True)
        image.save(root / f"k{i % 2}" / f"{i}.png")
    cached, card = prepare(config(root))
    decoded, card_decoded = prepare(config(root, cache=False))
    assert card == card_decoded and cached["cache"]["shape"][1] == 1
    assert torch.equal(materialize(cached, "train"), materialize(decoded, "train"))
    (folder,) = caches(tmp_path)
    assert not (folder / "rgb.npy").exists()


def test_a_half_written_cache_is_never_used(jpegs, tmp_path, monkeypatch, caplog):
    # data_prep stopped by an error while decoding: nothing published, nothing left.
    decode = folder_module._ScanFiles.__getitem__

    def fail_late(self, i):
        if i == 40:
            raise KeyboardInterrupt
        return decode(self, i)

    monkeypatch.setattr(folder_module._ScanFiles, "__getitem__", fail_late)
    with pytest.raises(KeyboardInterrupt):
        prepare(config(jpegs))
    cache_dir = tmp_path / "data" / "02_intermediate" / "image_cache"
    assert list(cache_dir.iterdir()) == []
    monkeypatch.setattr(folder_module._ScanFiles, "__getitem__", decode)

    # data_prep killed: its temporary folder, full of wrong pixels, is not used, and removed.
    manifest, _ = prepare(config(jpegs))
    (folder,) = caches(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = cache_dir / f".tmp-{folder.name[:16]}-{socket.gethostname()}-{int(dead.stdout)}-0"
    folder.rename(stale)
    data = bytearray((stale / "images.npy").read_bytes())
    data[-4000:] = b"\x07" * 4000
    (stale / "images.npy").write_bytes(bytes(data))
    rebuilt, _ = prepare(config(jpegs, cache=True))
    decoded, _ = prepare(config(jpegs, cache=False))
    assert caches(tmp_path) == [folder] and not stale.exists()
    assert torch.equal(materialize(rebuilt, "test"), materialize(decoded, "test"))
    assert torch.equal(materialize(rebuilt, "train"), materialize(decoded, "train"))

    # A published folder cut short (a disk filled up, a bad copy): decoded instead, rebuilt.
    with open(folder / "images.npy", "r+b") as f:
        f.truncate(1000)
    assert ImageCache.open(folder) is None
    with caplog.at_level("WARNING"):
        assert_same_batches(epochs(rebuilt), epochs(decoded))
    assert "missing or incomplete; decoding the files instead" in caplog.text
    again, _ = prepare(config(jpegs))
    assert ImageCache.open(folder, again["cache"]["key"]) is not None
    assert json.loads((folder / "cache.json").read_text())["key"] == folder.name


def _prepare_in_a_job(root: str, log: str) -> None:
    import os

    from directclr.data import folder
    from directclr.pipelines.data_prep.nodes import prepare_dataset

    real = folder.CacheWriter

    def writer(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.environ['RANK']}\n")
        return real(*args, **kwargs)

    folder.CacheWriter = writer
    dataset, _ = prepare_dataset(config(Path(root), cache_dir=str(Path(log).parent / "caches")))
    assert "cache" in dataset


@pytest.mark.slow  # a job of two processes
def test_under_a_job_rank_zero_alone_decodes_the_folder_into_the_cache(jpegs, tmp_path):
    from directclr.distributed import spawn

    log = tmp_path / "writers.txt"
    spawn(_prepare_in_a_job, 2, (str(jpegs), str(log)))
    assert log.read_text().split() == ["0"]  # rank 1 found the complete cache and reused it
