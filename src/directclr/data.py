"""Image sources, split into train / val / test, validated and described by a dataset card.

Two kinds of dataset artifact come out of :func:`prepare`:

* **tensors** (scikit-learn digits; torchvision's CIFAR-10/100, STL-10, MNIST, Fashion-MNIST,
  SVHN): uint8 images (N, C, H, W) and int64 labels per split, held in memory, because small
  images train fastest as one tensor on the training device.
* **manifest** (``image_folder``, the user's own images in class sub-folders): paths relative
  to ``root`` and labels per split. Images are decoded lazily in DataLoader workers
  (:func:`iterate_batches`), so a folder never has to fit in memory; :func:`materialize`
  decodes one split to a tensor when it is small enough.

Both are plain dicts of tensors, lists, strings and numbers, so they load with
``torch.load(weights_only=True)``. Every split is stratified and deterministic by seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

Source = Literal[
    "digits", "cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "svhn", "image_folder"
]
TORCHVISION_SOURCES = ("cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "svhn")
SPLITS = ("train", "val", "test", "unlabeled")
# The extensions torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_IMAGE_SIZE = 64
# STL-10's classes, for a copy of the binaries without class_names.txt beside them.
STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class DataConfig(BaseModel):
    """Which images to use, how to split them, and the shape they are brought to."""

    model_config = ConfigDict(extra="forbid")

    source: Source = "digits"
    root: str = Field(
        "data/01_raw",
        description="folder holding a torchvision source's files, or the image folder",
    )
    download: bool = Field(False, description="let torchvision fetch missing files")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="test share for digits and an image folder without val/"
    )
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of train held out as a validation split (0: none)"
    )
    max_samples: int | None = Field(None, ge=1, description="cap on every split, for quick runs")
    image_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="side of the square images; None keeps a source's own size "
        f"({DEFAULT_FOLDER_IMAGE_SIZE} for an image folder)",
    )
    channels: Literal[1, 3, "auto"] = Field(
        "auto", description="1 (grey), 3 (RGB) or auto: the source's own, or the majority"
    )
    num_workers: int = Field(2, ge=0, description="DataLoader workers decoding an image folder")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.download and self.source not in TORCHVISION_SOURCES:
            raise ValueError(
                f"download=true only applies to torchvision sources "
                f"({', '.join(TORCHVISION_SOURCES)}), not source={self.source}; "
                f"set data_prep.download=false"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Splitting


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, parameter: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of the kept rows and of a held-out ``fraction``, stratified by label.

    ``parameter`` names the setting that asked for the split, for the error message.
    """
    try:
        kept, held = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels
        )
    except ValueError as err:
        raise ValueError(
            f"cannot hold out {parameter}={fraction} of {len(labels)} images stratified by "
            f"class ({err}); change data_prep.{parameter} or add images to the small classes"
        ) from err
    return np.sort(kept), np.sort(held)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted positions of ``size`` rows drawn per class in proportion to the class sizes.

    Shares are rounded by largest remainder, so the subset has exactly ``size`` rows even when
    ``size`` is smaller than the number of classes. Rows labelled alike (e.g. all -1 for
    unlabelled images) make a plain random subset.
    """
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = size * counts / len(labels)
    take = np.floor(quota).astype(np.int64)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: size - int(take.sum())]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def split_indices(
    labels: dict[str, np.ndarray], config: DataConfig
) -> dict[str, tuple[str, np.ndarray]]:
    """For each split, the source part it comes from and the sorted rows it takes there.

    ``labels`` holds one label array per part of the source: ``all`` for a source without a
    test split of its own (split by ``test_fraction``), else ``train``, ``test`` and
    optionally ``unlabeled`` (labelled -1). Validation rows come out of train; ``max_samples``
    then caps every split. All of it stratified and deterministic by seed.
    """
    if "all" in labels:
        train, test = stratified_split(
            labels["all"], config.test_fraction, config.seed, "test_fraction"
        )
        splits = {"train": ("all", train), "test": ("all", test)}
    else:
        splits = {part: (part, np.arange(len(y))) for part, y in labels.items()}
    if config.val_fraction > 0:
        part, train = splits["train"]
        kept, val = stratified_split(
            labels[part][train], config.val_fraction, config.seed, "val_fraction"
        )
        splits["train"], splits["val"] = (part, train[kept]), (part, train[val])
    if config.max_samples is not None:
        for split, (part, rows) in splits.items():
            subset = stratified_subset(labels[part][rows], config.max_samples, config.seed)
            splits[split] = (part, rows[subset])
    return {split: splits[split] for split in SPLITS if split in splits}


# ---------------------------------------------------------------------------------------------
# In-memory sources


def _torchvision_class(source: str) -> type:
    from torchvision import datasets

    return {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "stl10": datasets.STL10,
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "svhn": datasets.SVHN,
    }[source]


def expected_files(source: str) -> list[str]:
    """The files torchvision reads for ``source``, relative to ``root``, in its own layout."""
    cls = _torchvision_class(source)
    if source in ("cifar10", "cifar100"):
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{name}" for name in names]
    if source == "stl10":
        return [f"{cls.base_folder}/{name}" for name, _ in cls.train_list + cls.test_list]
    if source == "svhn":
        return [cls.split_list[split][1] for split in ("train", "test")]
    return [f"{cls.__name__}/raw/{os.path.splitext(name)[0]}" for name, _ in cls.resources]


def _torchvision_parts(config: DataConfig) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list]:
    """A torchvision source's official splits as uint8 (N, C, H, W) arrays and labels."""
    source, root, download = config.source, Path(config.root), config.download
    expected = expected_files(source)
    missing = [name for name in expected if not (root / name).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"{source}: root={root} lacks {len(missing)} of the {len(expected)} files "
            f"torchvision reads: {', '.join(missing)}. Set data_prep.download=true to fetch them "
            f"(needs network), or put them under {root} in torchvision's layout (or point "
            f"data_prep.root at the folder that holds them)."
        )
    cls = _torchvision_class(source)
    try:
        if source in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
            sets = {s: cls(root, train=s == "train", download=download) for s in ("train", "test")}
        elif source == "stl10":
            sets = {
                s: cls(root, split=s, download=download) for s in ("train", "test", "unlabeled")
            }
        else:
            sets = {s: cls(root, split=s, download=download) for s in ("train", "test")}
    except (RuntimeError, OSError) as err:
        reason = f"{err.__class__.__name__}: {err}"
        if missing:
            raise RuntimeError(
                f"{source}: downloading into root={root} failed ({reason}). Without network, "
                f"put {', '.join(expected)} under {root} yourself (torchvision's layout)."
            ) from err
        raise RuntimeError(
            f"{source}: the files under root={root} are there but torchvision cannot read them "
            f"({reason}); they are corrupt or incomplete (torchvision checks their md5). "
            f"Delete {', '.join(expected)} and set data_prep.download=true, or replace them."
        ) from err

    parts = {}
    for split, ds in sets.items():
        if source in ("cifar10", "cifar100"):
            images, labels = ds.data.transpose(0, 3, 1, 2), ds.targets
        elif source in ("mnist", "fashion_mnist"):
            images, labels = ds.data.numpy()[:, None], ds.targets.numpy()
        else:
            images, labels = ds.data, ds.labels
        parts[split] = (np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64))
    if source == "stl10":
        classes = list(getattr(sets["train"], "classes", STL10_CLASSES))
    elif source == "svhn":
        classes = [str(digit) for digit in range(10)]
    else:
        classes = list(sets["train"].classes)
    return parts, classes


def load_source(config: DataConfig) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list]:
    """The source's parts as uint8 (N, C, H, W) images with int64 labels, and class names.

    Parts are ``all`` for digits (split later by ``test_fraction``), else the source's own
    ``train``, ``test`` and, for STL-10, ``unlabeled`` (labels -1).
    """
    if config.source == "digits":
        digits = load_digits()
        # Pixel values are 0..16; stretch them to the full uint8 range.
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        labels = digits.target.astype(np.int64)
        return {"all": (images, labels)}, [str(c) for c in digits.target_names]
    if config.source in TORCHVISION_SOURCES:
        return _torchvision_parts(config)
    raise ValueError(f"{config.source} is not an in-memory source; use prepare()")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images with ``channels`` channels: grey is repeated into RGB, and
    RGB becomes grey with PIL's ITU-R 601-2 luma, so both kinds of source agree exactly."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    luma = (images.to(torch.int32) * weights).sum(1, keepdim=True) + 0x8000
    return (luma >> 16).to(torch.uint8)


def resize(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to size x size (bilinear, antialiased), in chunks."""
    if tuple(images.shape[2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].float()
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images on the [0, 1] scale.

    Sums are exact integers, so the result does not depend on chunking or on the order.
    """
    total = torch.zeros(images.shape[1], dtype=torch.int64)
    squares = torch.zeros(images.shape[1], dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(torch.int64)
        total += batch.sum((0, 2, 3))
        squares += (batch**2).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    return _mean_std(total.tolist(), squares.tolist(), count)


def _mean_std(total: list[int], squares: list[int], count: int) -> tuple[list[float], list[float]]:
    mean = [s / (count * 255) for s in total]
    std = [
        math.sqrt(count * q - s * s) / (count * 255) for s, q in zip(total, squares, strict=True)
    ]
    return mean, std


def content_hash(dataset: dict[str, Any]) -> str:
    """sha256 over the class names and every split's uint8 images and int64 labels."""
    digest = hashlib.sha256(json.dumps(dataset["classes"]).encode())
    for split in SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key in dataset:
                array = np.ascontiguousarray(dataset[key].numpy())
                digest.update(f"{key} {list(array.shape)} {array.dtype}\n".encode())
                digest.update(array.data)
    return f"sha256:{digest.hexdigest()}"


def _counts_per_class(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts, strict=True)}


def prepare_in_memory(config: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """digits or a torchvision source: split uint8 tensors, their indices, and the card."""
    parts, classes = load_source(config)
    splits = split_indices({part: labels for part, (_, labels) in parts.items()}, config)
    source_channels = next(iter(parts.values()))[0].shape[1]
    channels = source_channels if config.channels == "auto" else config.channels
    dataset: dict[str, Any] = {"kind": "tensors", "source": config.source, "classes": classes}
    for split, (part, rows) in splits.items():
        images = to_channels(torch.from_numpy(parts[part][0][rows]), channels)
        if config.image_size is not None:
            images = resize(images, config.image_size)
        dataset[f"{split}_images"] = images
        if split != "unlabeled":
            dataset[f"{split}_labels"] = torch.from_numpy(parts[part][1][rows])
        dataset[f"{split}_indices"] = torch.from_numpy(rows.astype(np.int64))

    mean, std = channel_stats(dataset["train_images"])
    card = {
        "source": config.source,
        "kind": "tensors",
        "seed": config.seed,
        **({"test_fraction": config.test_fraction} if "all" in parts else {"root": config.root}),
        "val_fraction": config.val_fraction,
        "max_samples": config.max_samples,
        "image_shape": list(dataset["train_images"].shape[1:]),
        "channels": channels,
        "source_channels": int(source_channels),
        "classes": classes,
        "counts": {split: len(rows) for split, (_, rows) in splits.items()},
        "counts_per_class": {
            split: _counts_per_class(dataset[f"{split}_labels"].numpy(), classes)
            for split in splits
            if split != "unlabeled"
        },
        "channel_mean": mean,
        "channel_std": std,
        "content_hash": content_hash(dataset),
        "skipped_files": [],
    }
    return dataset, card


# ---------------------------------------------------------------------------------------------
# Image folders


def _fit(file: str | os.PathLike | io.BytesIO, size: int) -> tuple[Image.Image, str]:
    """The RGB image at ``size`` x ``size`` and the file's own PIL mode."""
    with Image.open(file) as img:
        mode = img.mode
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
        upright = ImageOps.exif_transpose(img)
    if upright.mode.startswith("I;16"):  # 16-bit grey: keep the high byte instead of clipping
        upright = Image.fromarray((np.asarray(upright) >> 8).astype(np.uint8))
    rgb = upright.convert("RGB")
    width, height = rgb.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    rgb = rgb.resize(new_size, Image.Resampling.BILINEAR)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return rgb.crop((left, top, left + size, top + size)), mode


def decode_image(file: str | os.PathLike | io.BytesIO, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): EXIF-rotated, converted to RGB, its
    shorter side resized to ``size`` (bilinear), centre-cropped, then made grey if asked.

    Grey comes from the resized RGB image, so grey and colour files give the same pixels
    whichever ``channels`` is chosen, and the same luma as :func:`to_channels`.
    """
    rgb, _ = _fit(file, size)
    if channels == 1:
        return np.array(rgb.convert("L"))[None]
    return np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1))


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

    card = {
        "source": "image_folder",
        "kind": "manifest",
        "root": str(root),
        "layout": layout["layout"],
        "seed": config.seed,
        **({"test_fraction": config.test_fraction} if "all" in parts else {}),
        "val_fraction": config.val_fraction,
        "max_samples": config.max_samples,
        "image_shape": [channels, size, size],
        "channels": channels,
        "source_channels": {"grey": int(grey), "colour": len(kept) - int(grey)},
        "classes": classes,
        "counts": {split: len(manifest[f"{split}_paths"]) for split in splits},
        "counts_per_class": {
            split: _counts_per_class(manifest[f"{split}_labels"].numpy(), classes)
            for split in splits
        },
        "channel_mean": mean,
        "channel_std": std,
        "content_hash": f"sha256:{digest.hexdigest()}",
        "skipped_files": skipped,
        "skipped_count": len(skipped),
        "ignored_files": layout["ignored_files"],
        "empty_class_folders": layout["empty_class_folders"],
    }
    return manifest, card


class ImageFolderSplit(Dataset):
    """One split of an image-folder manifest: item i is (uint8 (C, S, S) image, label).

    ``root`` overrides the manifest's root, for a folder that has moved since data_prep.
    """

    def __init__(self, manifest: dict[str, Any], split: str, root: str | None = None) -> None:
        if f"{split}_paths" not in manifest:
            available = [s for s in SPLITS if f"{s}_paths" in manifest]
            raise KeyError(f"the manifest has no {split} split; it has {', '.join(available)}")
        self.root = Path(root if root is not None else manifest["root"])
        self.paths = manifest[f"{split}_paths"]
        self.labels = manifest[f"{split}_labels"]
        self.size, self.channels = int(manifest["image_size"]), int(manifest["channels"])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.root / self.paths[i]
        try:
            image = decode_image(path, self.size, self.channels)
        except Exception as err:  # see _ScanFiles: PIL raises many types for a broken file
            raise OSError(
                f"{path} could not be decoded ({err.__class__.__name__}: {err}); it was readable "
                f"when data_prep ran, so the folder changed since: rerun data_prep"
            ) from err
        return torch.from_numpy(image), int(self.labels[i])


def iterate_batches(
    manifest: dict[str, Any],
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    *,
    drop_last: bool = False,
    pin_memory: bool = False,
    root: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 (B, C, S, S) images, int64 labels) of one split of an image-folder
    manifest, decoded in ``num_workers`` DataLoader worker processes.

    The order is the manifest's, or with ``shuffle`` a permutation fixed by ``seed`` (pass a
    different seed each epoch, e.g. ``seed + epoch``, for a fresh order).
    """
    loader = DataLoader(
        ImageFolderSplit(manifest, split, root),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
    yield from loader


def materialize(
    dataset: dict[str, Any],
    split: str,
    num_workers: int = 0,
    batch_size: int = 256,
    root: str | None = None,
) -> torch.Tensor:
    """All images of one split as one uint8 (N, C, H, W) tensor, from either kind of artifact:
    a tensors artifact gives its own; a manifest is decoded (for folders that fit in memory).

    The labels are ``dataset[f"{split}_labels"]`` in the same order.
    """
    if dataset.get("kind", "tensors") == "tensors":
        return dataset[f"{split}_images"]
    size, channels = int(dataset["image_size"]), int(dataset["channels"])
    out = torch.empty((len(dataset[f"{split}_paths"]), channels, size, size), dtype=torch.uint8)
    start = 0
    for images, _ in iterate_batches(
        dataset, split, batch_size, num_workers=num_workers, root=root
    ):
        out[start : start + len(images)] = images
        start += len(images)
    return out


def prepare(config: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dataset artifact for ``config.source`` and the dataset card that describes it.

    A dataset whose training split has fewer than two classes is refused: linear evaluation
    could not run on it, and would only say so after pretraining.
    """
    if config.source == "image_folder":
        dataset, card = prepare_image_folder(config)
    else:
        dataset, card = prepare_in_memory(config)
    present = [name for name, n in card["counts_per_class"]["train"].items() if n > 0]
    if len(present) < 2:
        raise ValueError(
            f"{config.source}: the training split has {len(present)} class(es) "
            f"({', '.join(present) or 'none'}); the linear probe needs at least two. Raise "
            f"data_prep.max_samples or use data with more classes"
        )
    return dataset, card


def pretraining_images(card: dict[str, Any]) -> int:
    """How many images pretraining draws its batches from: the train split, plus STL-10's
    unlabeled split when the dataset has one (see :func:`directclr.batches.training_batches`)."""
    counts = card["counts"]
    return int(counts.get("train", 0)) + int(counts.get("unlabeled", 0))
