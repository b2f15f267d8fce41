"""The user's image folder: its layout, classes and readable files, as a manifest of paths.

Every selected file is decoded once at data_prep (in DataLoader workers), so unreadable files
are skipped and listed before training and the channel statistics are those of the images
training will see.
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

from directclr.data.card import dataset_card
from directclr.data.config import (
    DEFAULT_FOLDER_IMAGE_SIZE,
    IMAGE_EXTENSIONS,
    DataConfig,
    split_indices,
)
from directclr.data.pixels import _fit, _mean_std

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

    def __init__(self, root: Path, paths: list[str], size: int) -> None:
        self.root, self.paths, self.size = root, paths, size

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
        rgb = np.asarray(image).astype(np.int64)
        grey = np.asarray(image.convert("L")).astype(np.int64)
        return {
            "ok": True,
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
    root: Path, selected: list[tuple[str, str, int]], size: int, num_workers: int
) -> tuple[list[tuple[str, str, int, dict]], list[dict[str, str]]]:
    """Decode every selected (split, path, label) once in DataLoader workers: the readable
    ones with their scan results, and the unreadable ones with the reason."""
    loader = DataLoader(
        _ScanFiles(root, [path for _, path, _ in selected], size),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_keep_item,
    )
    kept, skipped = [], []
    for n, ((split, path, label), item) in enumerate(zip(selected, loader, strict=True), 1):
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
    kept, skipped = _scan(root, selected, size, config.num_workers)
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
    total = [sum(item["sums"][channels][0][c] for item in train_items) for c in range(channels)]
    squares = [sum(item["sums"][channels][1][c] for item in train_items) for c in range(channels)]
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
