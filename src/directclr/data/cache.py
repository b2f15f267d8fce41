"""The decoded-image cache of an image folder: uint8 (N, C, S, S) pixels at the training size.

data_prep decodes every selected file once anyway (to skip unreadable ones and measure the
channel statistics); with ``data_prep.cache`` on it keeps those pixels, so training and the
embedding export read rows of one array file instead of decoding a JPEG per image per epoch.

Design, and why:

* **One array per key.** ``<cache_dir>/<key>/images.npy`` (numpy's ``.npy`` format, uint8,
  C order) and a small ``cache.json`` sidecar. The key is a sha256 over the format version,
  the image size, the ``channels`` setting and the sorted (path, sha256 of the bytes) of every
  selected file, so a file added, removed or modified, or a new size, gives a new key and a
  rebuild, while a rerun with the same folder finds the same key and reuses the array without
  decoding anything. Rows are in sorted path order, not split order, so the same selection
  split differently (another ``test_fraction`` or ``seed``) reuses it too; the manifest maps
  each split's entries to rows (``{split}_rows``). Unreadable files keep a zero row, never
  referenced, so a row's index follows from the listing alone.
* **Outside Kedro's versioning.** The folder is named by the key, not by the run, so every
  versioned manifest of the same images points at the same array.
* **Atomic.** The array is written into ``.tmp-<key>-<host>-<pid>-<random>/`` and the folder
  renamed to ``<key>/`` only once the pixels and the sidecar are complete; a killed data_prep
  leaves only a ``.tmp-`` folder, which is never read, and which a later data_prep on the same
  host removes once its process is gone. A ``<key>/`` folder whose sidecar or file size does
  not match is rebuilt.
* **Read with ``pread``, not ``mmap``.** Both read only the rows asked for and let the kernel's
  page cache keep the file for the next epoch; but every page a memory map touches stays mapped
  and counts as the process's resident memory, growing to the file's size in one epoch, while
  ``pread`` copies the rows into the batch and keeps resident memory at about one batch. Rows
  of a batch are read in increasing order (forward reads) and land at their batch position, so
  a batch equals the one the decoding path builds, image for image.
* **Written with ``pwrite``** for the same reason: data_prep's resident memory stays bounded
  while it writes an array larger than memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from directclr.data.pixels import to_channels

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_ARRAY, _SIDECAR, _TEMP = "images.npy", "cache.json", ".tmp-"


# ---------------------------------------------------------------------------------------------
# The key


class _HashFiles(Dataset):
    """sha256 of each file's bytes, or why it could not be read: no decoding."""

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root, self.paths = root, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            return hashlib.sha256((self.root / self.paths[i]).read_bytes()).hexdigest()
        except OSError as err:
            return f"unreadable: {err.__class__.__name__}"


def _keep(item: Any) -> Any:
    return item


def hash_files(root: Path, paths: list[str], num_workers: int) -> list[str]:
    """sha256 of every file, read in ``num_workers`` DataLoader workers (about ten times
    cheaper than decoding: what a rerun pays to find its cache)."""
    loader = DataLoader(
        _HashFiles(root, paths), batch_size=None, num_workers=num_workers, collate_fn=_keep
    )
    return list(loader)


def cache_key(paths: Sequence[str], hashes: Sequence[str], size: int, channels: Any) -> str:
    """The cache's key: the format, size, ``channels`` setting and sorted (path, sha256)."""
    digest = hashlib.sha256(
        f"image-cache {CACHE_FORMAT} size={size} channels={channels}\n".encode()
    )
    for path, sha in sorted(zip(paths, hashes, strict=True)):
        digest.update(f"{path}\t{sha}\n".encode())
    return digest.hexdigest()


def cache_rows(paths: Sequence[str]) -> np.ndarray:
    """The cache row of each path: its position in sorted path order."""
    order = sorted(range(len(paths)), key=paths.__getitem__)
    rows = np.empty(len(paths), dtype=np.int64)
    rows[order] = np.arange(len(paths))
    return rows


# ---------------------------------------------------------------------------------------------
# Reading


class ImageCache:
    """A complete cache folder: row reads of its uint8 (N, C, S, S) array, and its sidecar."""

    def __init__(self, folder: Path, meta: dict[str, Any], offset: int, name: str = _ARRAY) -> None:
        self.folder, self.meta, self.offset, self.name = folder, meta, offset, name
        self.shape = tuple(meta["shape"])
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._fd: int | None = None
        self._pid = -1

    @classmethod
    def open(cls, folder: Path | str, key: str | None = None) -> ImageCache | None:
        """The cache in ``folder`` if it is complete (and has ``key``), else None."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / _SIDECAR).read_text())
            with open(folder / _ARRAY, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
            size = (folder / _ARRAY).stat().st_size
        except (OSError, ValueError, KeyError):
            return None
        complete = (
            meta.get("format") == CACHE_FORMAT
            and (key is None or meta.get("key") == key)
            and list(shape) == meta.get("shape")
            and dtype == np.uint8
            and not fortran
            and size == offset + int(np.prod(shape))
        )
        return cls(folder, meta, offset) if complete else None

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a fresh descriptor after fork
            self._fd, self._pid = os.open(self.folder / self.name, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows: Sequence[int] | np.ndarray | torch.Tensor, pin: bool = False):
        """uint8 (len(rows), C, S, S) tensor of the given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        view = out.numpy().reshape(len(rows), self.row_bytes)
        fd = self._file()
        for i in np.argsort(rows, kind="stable"):
            got = os.preadv(fd, [view[i]], self.offset + int(rows[i]) * self.row_bytes)
            if got != self.row_bytes:
                raise OSError(f"{self.folder / self.name} is shorter than its header says; "
                              f"delete the folder and rerun data_prep")  # fmt: skip
        return out

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "meta": self.meta, "offset": self.offset,
                "name": self.name}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["meta"], state["offset"], state["name"])

    def __del__(self) -> None:
        self.close()


def manifest_cache(manifest: dict[str, Any]) -> ImageCache | None:
    """The cache a manifest refers to, or None (no cache, or a missing or incomplete one: then
    a warning, and the caller decodes the files, which gives the same pixels, only slower)."""
    reference = manifest.get("cache")
    if not reference:
        return None
    cache = ImageCache.open(reference["path"], reference["key"])
    if cache is None:
        logger.warning(
            "image_folder: the decoded-image cache %s is missing or incomplete; decoding the "
            "files instead (same pixels, slower). Rerun data_prep to rebuild it",
            reference["path"],
        )
    return cache


# ---------------------------------------------------------------------------------------------
# Writing


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(cache_dir: Path) -> None:
    """Remove ``.tmp-`` folders left by a data_prep on this host whose process is gone."""
    host = socket.gethostname()
    for entry in cache_dir.glob(f"{_TEMP}*"):
        parts = entry.name[len(_TEMP) :].split("-")
        try:
            mine, pid = "-".join(parts[1:-2]) == host, int(parts[-2])
        except (ValueError, IndexError):
            continue
        if mine and not _alive(pid):
            logger.info("image_folder: removing %s, left by a data_prep that stopped", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _write_header(path: Path, shape: tuple[int, ...]) -> int:
    with open(path, "wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))  # sparse until written
    return offset


class CacheWriter:
    """Writes the RGB pixels of each row into a temporary folder as data_prep decodes them;
    :meth:`finish` makes the channels final and publishes the folder under its key."""

    def __init__(self, cache_dir: Path, key: str, rows: int, size: int) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cache_dir)
        self.cache_dir, self.key, self.size = cache_dir, key, size
        name = f"{_TEMP}{key[:16]}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.temp = cache_dir / name
        self.temp.mkdir()
        self.shape = (rows, 3, size, size)
        self.offset = _write_header(self.temp / "rgb.npy", self.shape)
        self.fd = os.open(self.temp / "rgb.npy", os.O_WRONLY)

    def write(self, row: int, pixels: np.ndarray) -> None:
        data = np.ascontiguousarray(pixels, dtype=np.uint8)
        os.pwrite(self.fd, data.data, self.offset + row * data.nbytes)

    def finish(self, channels: int, meta: dict[str, Any]) -> ImageCache:
        """Publish the cache: grey rows made from the RGB ones when ``channels`` is 1 (the
        luma of :func:`to_channels`, as the decoding path makes them), the sidecar written, the
        folder renamed to its key. Another data_prep that published the same key first wins."""
        os.close(self.fd)
        rgb = self.temp / "rgb.npy"
        if channels == 1:
            source = ImageCache(self.temp, {"shape": list(self.shape)}, self.offset, rgb.name)
            shape = (self.shape[0], 1, self.size, self.size)
            offset = _write_header(self.temp / _ARRAY, shape)
            fd = os.open(self.temp / _ARRAY, os.O_WRONLY)
            try:
                for start in range(0, shape[0], 1024):
                    rows = np.arange(start, min(start + 1024, shape[0]))
                    grey = to_channels(source.read(rows), 1).numpy()
                    os.pwrite(fd, grey.data, offset + start * grey[0].nbytes)
            finally:
                os.close(fd)
                source.close()
            rgb.unlink()
        else:
            shape = self.shape
            rgb.rename(self.temp / _ARRAY)
        meta = {"format": CACHE_FORMAT, "key": self.key, "shape": list(shape),
                "dtype": "uint8"} | meta  # fmt: skip
        (self.temp / _SIDECAR).write_text(json.dumps(meta))
        final = self.cache_dir / self.key
        # An existing one is incomplete (else it would have been reused), or just published
        if final.exists() and ImageCache.open(final, self.key) is None:
            shutil.rmtree(final)
        try:
            os.rename(self.temp, final)
        except OSError:  # published meanwhile by another data_prep: keep theirs
            shutil.rmtree(self.temp, ignore_errors=True)
        cache = ImageCache.open(final, self.key)
        if cache is None:
            raise OSError(f"the decoded-image cache {final} could not be published")
        return cache

    def abandon(self) -> None:
        """Remove the temporary folder (data_prep failed; nothing was published)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        shutil.rmtree(self.temp, ignore_errors=True)


def train_channel_sums(cache: ImageCache, rows: np.ndarray, chunk: int = 1024):
    """Exact per-channel sums and sums of squares of the given rows (read in sorted chunks)."""
    total = torch.zeros(cache.shape[1], dtype=torch.int64)
    squares = torch.zeros(cache.shape[1], dtype=torch.int64)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    for start in range(0, len(rows), chunk):
        batch = cache.read(rows[start : start + chunk]).to(torch.int64)
        total += batch.sum((0, 2, 3))
        squares += (batch**2).sum((0, 2, 3))
    return total.tolist(), squares.tolist()
