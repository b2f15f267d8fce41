"""The user's image folder: its layout, classes and readable files, as a manifest of paths.

Every selected file is decoded once at data_prep (in DataLoader workers), so unreadable files
are skipped and listed before training and the channel statistics are those of the images
training will see. With ``data_prep.cache`` on, the decoded pixels are kept in a uint8 array
at the training size (see :mod:`directclr.data.cache`) that training reads instead of the
files, and a rerun on an unchanged folder finds that array and decodes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from directclr.data.cache import (
    CacheWriter,
    ImageCache,
    cache_key,
    cache_rows,
    hash_files,
    train_channel_sums,
)
from directclr.data.card import dataset_card
from directclr.data.config import (
    DEFAULT_FOLDER_IMAGE_SIZE,
    IMAGE_EXTENSIONS,
    DataConfig,
    split_indices,
)
from directclr.data.pixels import _fit, _mean_std
from directclr.devices import resolve_workers

logger = logging.getLogger(__name__)


_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(folder: Path, root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Image paths (relative to ``root``) per class sub-folder of ``folder``, searched
    recursively, and the non-image files met on the way. Hidden entries are left out."""
    classes: dict[str, list[str]] = {}
    ignored: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            ignored.append(entry.relative_to(root).as_posix())
            continue
        paths = classes.setdefault(entry.name, [])
        for current, dirs, files in os.walk(entry):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                relative = (Path(current) / name).relative_to(root).as_posix()
                (paths if _is_image(name) else ignored).append(relative)
    if not classes and any(_is_image(name) for name in ignored):
        raise ValueError(
            f"{folder} holds images directly, not in class sub-folders; put each class's "
            f"images in a sub-folder named after the class (for ImageNet's val/, torchvision's "
            f"ImageNet class or its valprep.sh script sorts them)"
        )
    return classes, ignored


def scan_layout(root: Path) -> dict[str, Any]:
    """The image folder's layout: which sub-folder makes which part, the classes and files.

    ``root/train`` with ``root/val`` (or ``root/test``) beside it gives the train and test
    parts (ImageNet's layout; val/ becomes the test split); ``root/train`` alone, or a root
    whose sub-folders are the classes, is one part split by ``test_fraction``.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"image_folder: root={root} is not a folder; set data_prep.root to a folder with "
            f"one sub-folder of images per class (or train/ and val/, each with class sub-folders)"
        )
    subfolders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" in subfolders and subfolders <= {"train", "val", "test"}:
        if {"val", "test"} <= subfolders:
            raise ValueError(
                f"image_folder: {root} has both val/ and test/; keep one of them (it becomes "
                f"the test split) or move the other away"
            )
        held = sorted({"val", "test"} & subfolders)
        if held:
            folders = {"train": root / "train", "test": root / held[0]}
            layout = f"train/{held[0]}"
        else:
            folders, layout = {"all": root / "train"}, "train"
    else:
        folders, layout = {"all": root}, "class_folders"
    found = {part: _class_folders(folder, root) for part, folder in folders.items()}
    first = "train" if "train" in found else "all"
    empty = [
        (folders[part] / name).relative_to(root).as_posix()
        for part, (class_paths, _) in found.items()
        for name, paths in class_paths.items()
        if not paths
    ]
    classes = sorted(name for name, paths in found[first][0].items() if paths)
    if not classes:
        raise ValueError(
            f"image_folder: no images under {folders[first]} (extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}); put each class's images in a sub-folder of it"
        )
    if "test" in found:
        unknown = sorted(
            name for name, paths in found["test"][0].items() if paths and name not in classes
        )
        if unknown:
            raise ValueError(
                f"image_folder: class folder(s) {', '.join(unknown)} in {folders['test']} have "
                f"no images in {folders['train']}; add training images for them, or remove or "
                f"rename them so every test class is a training class"
            )
    index = {name: i for i, name in enumerate(classes)}
    parts = {
        part: [(path, index[name]) for name in classes for path in class_paths.get(name, [])]
        for part, (class_paths, _) in found.items()
    }
    return {
        "layout": layout,
        "classes": classes,
        "parts": parts,
        "ignored_files": [path for _, ignored in found.values() for path in ignored],
        "empty_class_folders": empty,
    }


class _ScanFiles(Dataset):
    """Decodes each file once for data_prep: readable or not, grey or colour, file hash, and
    pixel sums of the resized image in RGB and in grey (for the channel statistics)."""

    def __init__(self, root: Path, paths: list[str], size: int, pixels: bool = False) -> None:
        self.root, self.paths, self.size, self.pixels = root, paths, size, pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            data = (self.root / self.paths[i]).read_bytes()
            image, mode = _fit(io.BytesIO(data), self.size)
        # PIL raises many types for broken files (OSError, SyntaxError, ValueError,
        # DecompressionBombError, zlib errors); any of them means the file is unreadable.
        except Exception as err:
            return {"ok": False, "reason": f"{err.__class__.__name__}: {err}"}
        pixels = np.asarray(image)
        rgb = pixels.astype(np.int64)
        grey = np.asarray(image.convert("L")).astype(np.int64)
        return {
            "ok": True,
            # RGB (3, S, S), exactly decode_image's; grey is made from it as decode_image does
            "pixels": np.ascontiguousarray(pixels.transpose(2, 0, 1)) if self.pixels else None,
            "grey": mode in _GRAY_MODES,
            "sha256": hashlib.sha256(data).hexdigest(),
            "sums": {
                3: ([int(s) for s in rgb.sum((0, 1))], [int(q) for q in (rgb**2).sum((0, 1))]),
                1: ([int(grey.sum())], [int((grey**2).sum())]),
            },
        }


def _keep_item(item: Any) -> Any:
    return item


def _scan(
    root: Path,
    selected: list[tuple[str, str, int]],
    size: int,
    num_workers: int,
    writer: CacheWriter | None = None,
    rows: np.ndarray | None = None,
    hashes: list[str] | None = None,
) -> tuple[list[tuple[str, str, int, dict]], list[dict[str, str]]]:
    """Decode every selected (split, path, label) once in DataLoader workers: the readable
    ones with their scan results, and the unreadable ones with the reason. With a ``writer``
    the pixels of entry i go to cache row ``rows[i]``, and each file must still have the
    sha256 in ``hashes`` that the cache key was made of."""
    loader = DataLoader(
        _ScanFiles(root, [path for _, path, _ in selected], size, pixels=writer is not None),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_keep_item,
    )
    kept, skipped = [], []
    for n, ((split, path, label), item) in enumerate(zip(selected, loader, strict=True), 1):
        if item["ok"] and writer is not None:
            if item["sha256"] != hashes[n - 1]:
                raise ValueError(
                    f"image_folder: {path} changed while data_prep read it; rerun data_prep"
                )
            writer.write(int(rows[n - 1]), item.pop("pixels"))
        if item["ok"]:
            kept.append((split, path, label, item))
        else:
            skipped.append({"path": path, "split": split, "reason": item["reason"]})
            logger.warning("image_folder: skipped %s (%s)", path, item["reason"])
        if n % 10000 == 0:
            logger.info("image_folder: decoded %d of %d files", n, len(selected))
    if not kept:
        raise ValueError(
            f"image_folder: none of the {len(selected)} image files under {root} could be "
            f"decoded (first: {skipped[0]['path']}: {skipped[0]['reason']}); check the files"
        )
    return kept, skipped


def prepare_image_folder(config: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user's image folder: a manifest of readable files per split, and the card.

    Every selected file is decoded once here (in ``num_workers`` DataLoader workers) so that
    unreadable ones are skipped and listed before training, and the channel statistics are
    those of the images training will see.

    With ``config.cache`` the files are first hashed (read, not decoded) to make the cache
    key: a complete cache with that key is reused, its sidecar telling which files were
    unreadable or grey and its pixels giving the statistics, and nothing is decoded; else
    the pixels decoded here are written into a new cache (each file is then read twice, the
    second read usually from the page cache). The manifest gets ``cache`` (path, key, shape)
    and ``{split}_rows``, each entry's row in it.
    """
    root = Path(config.root)
    size = config.image_size or DEFAULT_FOLDER_IMAGE_SIZE
    layout = scan_layout(root)
    classes = layout["classes"]
    if len(classes) < 2:
        raise ValueError(
            f"image_folder: {root} has one class ({classes[0]}); the linear probe and kNN need "
            f"at least two. Put each class's images in a sub-folder of {root} named after it"
        )
    for path in layout["ignored_files"]:
        logger.warning(
            "image_folder: %s is not an image file (%s); ignored", path, ", ".join(IMAGE_EXTENSIONS)
        )
    for folder in layout["empty_class_folders"]:
        logger.warning("image_folder: class folder %s holds no images; ignored", folder)

    parts = layout["parts"]
    labels = {
        part: np.array([y for _, y in entries], dtype=np.int64) for part, entries in parts.items()
    }
    splits = split_indices(labels, config)
    selected = [
        (split, *parts[part][row]) for split, (part, rows) in splits.items() for row in rows
    ]
    writer, workers = None, resolve_workers(config.num_workers)
    if not config.cache:
        cache = None
        kept, skipped = _scan(root, selected, size, workers)
    else:
        paths = [path for _, path, _ in selected]
        hashes = hash_files(root, paths, workers)
        key, rows = cache_key(paths, hashes, size, config.channels), cache_rows(paths)
        cache = ImageCache.open(Path(config.cache_dir) / key, key)
        if cache is not None:
            logger.info("image_folder: reusing the decoded images in %s", cache.folder)
            kept, skipped = _from_cache(cache, selected, rows, hashes)
        else:
            logger.info(
                "image_folder: decoding %d files into a cache under %s",
                len(paths),
                config.cache_dir,
            )
            writer = CacheWriter(Path(config.cache_dir), key, len(paths), size)
    try:
        if writer is not None:
            kept, skipped = _scan(root, selected, size, workers, writer, rows, hashes)
        manifest, card = _describe(
            config, root, size, layout, splits, selected, kept, skipped, cache
        )
        if writer is not None:
            by_path = {path: item for _, path, _, item in kept}
            states = "".join(
                ("g" if by_path[p]["grey"] else "c") if p in by_path else "x" for p in sorted(paths)
            )
            reasons = {entry["path"]: entry["reason"] for entry in skipped}
            sidecar = {
                "image_size": size,
                "channels_setting": config.channels,
                "channels": manifest["channels"],
                "rows": states,  # per row: g(rey), c(olour) or x (unreadable)
                "skipped": {
                    str(int(rows[i])): reasons[p] for i, p in enumerate(paths) if p in reasons
                },
            }
            cache = writer.finish(manifest["channels"], sidecar)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if cache is not None:
        manifest["cache"] = {"path": str(cache.folder), "key": cache.meta["key"],
                             "shape": list(cache.shape)}  # fmt: skip
        position = {path: int(row) for path, row in zip(paths, rows, strict=True)}
        for split in splits:
            manifest[f"{split}_rows"] = torch.tensor(
                [position[p] for p in manifest[f"{split}_paths"]], dtype=torch.int64
            )
    return manifest, card


def _from_cache(
    cache: ImageCache, selected: list[tuple[str, str, int]], rows: np.ndarray, hashes: list[str]
) -> tuple[list[tuple[str, str, int, dict]], list[dict[str, str]]]:
    """What :func:`_scan` finds, read from a cache's sidecar instead of decoding the files
    (the sums are left out: the statistics are then summed from the cached pixels)."""
    states, reasons = cache.meta["rows"], cache.meta["skipped"]
    kept, skipped = [], []
    for (split, path, label), row, sha in zip(selected, rows, hashes, strict=True):
        state = states[int(row)]
        if state == "x":
            reason = reasons[str(int(row))]
            skipped.append({"path": path, "split": split, "reason": reason})
            logger.warning("image_folder: skipped %s (%s)", path, reason)
        else:
            kept.append((split, path, label, {"ok": True, "grey": state == "g", "sha256": sha}))
    return kept, skipped


def _describe(
    config: DataConfig,
    root: Path,
    size: int,
    layout: dict[str, Any],
    splits: dict[str, tuple[str, np.ndarray]],
    selected: list[tuple[str, str, int]],
    kept: list[tuple[str, str, int, dict]],
    skipped: list[dict[str, str]],
    cache: ImageCache | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and the card of the scanned files; the channel statistics come from the
    scan's sums, or from a reused ``cache``'s pixels (the same integers)."""
    classes, parts = layout["classes"], layout["parts"]
    selected_train = np.bincount(
        [y for s, _, y in selected if s == "train"], minlength=len(classes)
    )
    kept_train = np.bincount([y for s, _, y, _ in kept if s == "train"], minlength=len(classes))
    unreadable = [
        c for c, n, k in zip(classes, selected_train, kept_train, strict=True) if n > 0 and k == 0
    ]
    if unreadable:
        raise ValueError(
            f"image_folder: class(es) {', '.join(unreadable)} have no readable training images "
            f"(see the skipped files above); add images or remove those class folders"
        )

    grey = sum(item["grey"] for *_, item in kept)
    channels = config.channels
    if channels == "auto":
        channels = 1 if grey > len(kept) - grey else 3
    train_items = [item for split, *_, item in kept if split == "train"]
    if cache is not None:
        if cache.shape[1] != channels:
            raise ValueError(f"the cache {cache.folder} has {cache.shape[1]} channels, the "
                             f"files {channels}; delete it and rerun data_prep")  # fmt: skip
        position = cache_rows([path for _, path, _ in selected])
        index = {path: i for i, (_, path, _) in enumerate(selected)}
        train_rows = [position[index[path]] for split, path, *_ in kept if split == "train"]
        total, squares = train_channel_sums(cache, np.array(train_rows))
    else:
        total = [sum(item["sums"][channels][0][c] for item in train_items)
                 for c in range(channels)]  # fmt: skip
        squares = [sum(item["sums"][channels][1][c] for item in train_items)
                   for c in range(channels)]  # fmt: skip
    mean, std = _mean_std(total, squares, len(train_items) * size * size)

    manifest: dict[str, Any] = {
        "kind": "manifest",
        "source": "image_folder",
        "root": str(root),
        "image_size": size,
        "channels": channels,
        "classes": classes,
    }
    digest = hashlib.sha256(f"image_folder size={size} channels={channels}\n".encode())
    digest.update(json.dumps(classes).encode())
    for split in splits:
        rows = [(path, label, item) for s, path, label, item in kept if s == split]
        manifest[f"{split}_paths"] = [path for path, _, _ in rows]
        manifest[f"{split}_labels"] = torch.tensor([y for _, y, _ in rows], dtype=torch.int64)
        for path, label, item in rows:
            digest.update(f"{split}\t{path}\t{label}\t{item['sha256']}\n".encode())

    card = dataset_card(
        config,
        kind="manifest",
        split_labels={split: manifest[f"{split}_labels"].numpy() for split in splits},
        counts={split: len(manifest[f"{split}_paths"]) for split in splits},
        classes=classes,
        image_shape=[channels, size, size],
        source_channels={"grey": int(grey), "colour": len(kept) - int(grey)},
        channel_mean=mean,
        channel_std=std,
        digest=f"sha256:{digest.hexdigest()}",
        single_part="all" in parts,
        skipped_files=skipped,
        layout=layout["layout"],
        skipped_count=len(skipped),
        ignored_files=layout["ignored_files"],
        empty_class_folders=layout["empty_class_folders"],
    )
    return manifest, card
