"""torchvision sources read from small fake files written in torchvision's own layout.

Nothing here downloads. CIFAR, STL-10 and SVHN files carry md5 sums in torchvision that a
fake cannot match, so the tests that read fakes replace torchvision's ``check_integrity`` in
those modules with a file-exists check; MNIST's raw files have no md5 check. Everything else
(file names, folders, binary formats, torchvision's own parsing) is real.
"""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from directclr.data import DataConfig, expected_files, prepare
from directclr.framework.datasets import TorchDataset

RNG = np.random.default_rng(0)


def _exists(fpath, md5=None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture
def no_md5(monkeypatch):
    for module in ("cifar", "stl10", "svhn"):
        monkeypatch.setattr(f"torchvision.datasets.{module}.check_integrity", _exists)


def _pixels(n: int, c: int, size: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, c, size, size), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(root: Path, per_batch: int = 20) -> dict:
    """CIFAR-10's python pickles: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    train = [_pixels(per_batch, 3, 32) for _ in range(5)]
    labels = [list(np.arange(per_batch) % 10) for _ in range(5)]
    for i, (x, y) in enumerate(zip(train, labels, strict=True), start=1):
        _pickle(folder / f"data_batch_{i}", {"data": x.reshape(per_batch, -1), "labels": y})
    test = _pixels(30, 3, 32)
    _pickle(
        folder / "test_batch", {"data": test.reshape(30, -1), "labels": list(np.arange(30) % 10)}
    )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _pickle(folder / "batches.meta", {"label_names": names})
    return {"train": np.concatenate(train), "test": test, "classes": names}


def write_cifar100(root: Path) -> dict:
    folder = root / "cifar-100-python"
    train, test = _pixels(200, 3, 32), _pixels(100, 3, 32)
    _pickle(
        folder / "train",
        {"data": train.reshape(200, -1), "fine_labels": list(np.arange(200) % 100)},
    )
    _pickle(folder / "test", {"data": test.reshape(100, -1), "fine_labels": list(np.arange(100))})
    _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return {"train": train, "test": test}


def _idx(path: Path, array: np.ndarray) -> None:
    """An idx (LeCun) file of uint8: magic 0x08 + number of dimensions, big-endian sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(root: Path, folder: str = "MNIST") -> dict:
    raw = root / folder / "raw"
    train, test = _pixels(40, 1, 28)[:, 0], _pixels(20, 1, 28)[:, 0]
    _idx(raw / "train-images-idx3-ubyte", train)
    _idx(raw / "train-labels-idx1-ubyte", (np.arange(40) % 10).astype(np.uint8))
    _idx(raw / "t10k-images-idx3-ubyte", test)
    _idx(raw / "t10k-labels-idx1-ubyte", (np.arange(20) % 10).astype(np.uint8))
    return {"train": train[:, None], "test": test[:, None]}


def write_svhn(root: Path) -> dict:
    """SVHN's .mat files: X is (32, 32, 3, N), y is (N, 1) with 10 standing for digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 30), ("test", 20)):
        x = _pixels(n, 3, 32)
        y = np.arange(n) % 10
        savemat(
            root / f"{split}_32x32.mat",
            {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None]},
        )
        out[split] = x
    return out


def write_stl10(root: Path) -> dict:
    """STL-10's binaries: column-major 3x96x96 images, 1-based uint8 labels, class names."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", 20), ("test", 10), ("unlabeled", 30)):
        x = _pixels(n, 3, 96)
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(
                (np.arange(n) % 10 + 1).astype(np.uint8).tobytes()
            )
        out[split] = x
    (folder / "class_names.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")
    return out


WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "mnist": write_mnist,
    "fashion_mnist": lambda root: write_mnist(root, "FashionMNIST"),
    "svhn": write_svhn,
    "stl10": write_stl10,
}


@pytest.mark.parametrize("source", list(WRITERS))
def test_each_source_reads_its_files_into_uint8_splits_with_labels(tmp_path, no_md5, source):
    written = WRITERS[source](tmp_path)
    dataset, card = prepare(DataConfig(source=source, root=str(tmp_path)))
    for split in ("train", "test"):
        images = dataset[f"{split}_images"]
        assert images.dtype == torch.uint8 and dataset[f"{split}_labels"].dtype == torch.int64
        # Every image is the one written, found again through the split indices.
        rows = dataset[f"{split}_indices"].numpy()
        assert np.array_equal(images.numpy(), written[split][rows])
        assert card["counts"][split] == len(written[split])
    assert dataset["train_labels"].min() == 0
    assert len(card["classes"]) == int(dataset["train_labels"].max()) + 1
    assert card["image_shape"] == list(written["train"].shape[1:])
    expected_mean = written["train"].astype(np.float64).mean((0, 2, 3)) / 255
    np.testing.assert_allclose(card["channel_mean"], expected_mean, rtol=1e-12)
    assert card["root"] == str(tmp_path) and card["content_hash"].startswith("sha256:")


def test_labels_and_class_names_follow_torchvision(tmp_path, no_md5):
    write_svhn(tmp_path / "svhn")
    svhn, card = prepare(DataConfig(source="svhn", root=str(tmp_path / "svhn")))
    assert svhn["train_labels"][:11].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # 10 -> 0
    assert card["classes"] == [str(i) for i in range(10)]
    write_cifar10(tmp_path / "cifar")
    _, card = prepare(DataConfig(source="cifar10", root=str(tmp_path / "cifar")))
    assert card["classes"][:3] == ["airplane", "automobile", "bird"]
    assert card["counts_per_class"]["train"]["cat"] == 10


def test_stl10_keeps_its_unlabeled_split_for_pretraining(tmp_path, no_md5):
    written = write_stl10(tmp_path)
    dataset, card = prepare(DataConfig(source="stl10", root=str(tmp_path), max_samples=12))
    assert dataset["unlabeled_images"].shape == (12, 3, 96, 96)
    assert "unlabeled_labels" not in dataset
    rows = dataset["unlabeled_indices"].numpy()
    assert np.array_equal(dataset["unlabeled_images"].numpy(), written["unlabeled"][rows])
    assert card["counts"] == {"train": 12, "test": 10, "unlabeled": 12}
    assert "unlabeled" not in card["counts_per_class"]
    assert card["classes"] == [f"name{i}" for i in range(10)]


def test_validation_split_max_samples_size_and_channels_on_cifar(tmp_path, no_md5):
    write_cifar10(tmp_path)
    config = DataConfig(source="cifar10", root=str(tmp_path), val_fraction=0.2,
                        max_samples=40, image_size=16, channels=1)  # fmt: skip
    dataset, card = prepare(config)
    assert card["counts"] == {"train": 40, "val": 20, "test": 30}
    assert np.bincount(dataset["train_labels"].numpy()).tolist() == [4] * 10
    assert np.bincount(dataset["val_labels"].numpy()).tolist() == [2] * 10
    assert set(dataset["val_indices"].tolist()).isdisjoint(dataset["train_indices"].tolist())
    assert dataset["test_images"].shape == (30, 1, 16, 16) and card["image_shape"] == [1, 16, 16]
    assert card["channels"] == 1 and card["source_channels"] == 3
    again, _ = prepare(config)
    assert torch.equal(again["val_indices"], dataset["val_indices"])


def test_artifact_round_trips_through_the_weights_only_catalog_dataset(tmp_path, no_md5):
    write_stl10(tmp_path / "raw")
    dataset, _ = prepare(DataConfig(source="stl10", root=str(tmp_path / "raw"), max_samples=5))
    store = TorchDataset(filepath=str(tmp_path / "dataset.pt"))
    store.save(dataset)
    loaded = store.load()
    assert set(loaded) == set(dataset)
    assert torch.equal(loaded["unlabeled_images"], dataset["unlabeled_images"])
    assert loaded["classes"] == dataset["classes"] and loaded["source"] == "stl10"


def test_missing_files_name_the_root_the_files_and_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        prepare(DataConfig(source="cifar10", root=str(tmp_path / "raw")))
    message = str(error.value)
    assert str(tmp_path / "raw") in message
    assert "cifar-10-batches-py/data_batch_1" in message and "batches.meta" in message
    assert "data_prep.download=true" in message
    assert expected_files("mnist")[0] == "MNIST/raw/train-images-idx3-ubyte"
    assert expected_files("svhn") == ["train_32x32.mat", "test_32x32.mat"]


def test_files_that_fail_torchvisions_md5_check_are_reported_as_corrupt(tmp_path):
    write_cifar10(tmp_path)  # real md5 check: a fake never matches
    with pytest.raises(RuntimeError, match="corrupt or incomplete.*md5"):
        prepare(DataConfig(source="cifar10", root=str(tmp_path)))


def test_download_runs_torchvision_and_explains_a_failure(tmp_path, monkeypatch):
    calls = []

    def offline(url, download_root, **kwargs):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(RuntimeError, match="downloading into root=.*network unreachable") as error:
        prepare(DataConfig(source="cifar10", root=str(tmp_path), download=True))
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert "cifar-10-batches-py/test_batch" in str(error.value)


def test_download_with_files_in_place_fetches_nothing(tmp_path, monkeypatch, no_md5):
    def fail(*args, **kwargs):
        raise AssertionError("no download expected")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", fail)
    write_cifar10(tmp_path)
    dataset, _ = prepare(DataConfig(source="cifar10", root=str(tmp_path), download=True))
    assert dataset["train_images"].shape == (100, 3, 32, 32)


@pytest.mark.parametrize("source", ["mnist", "fashion_mnist", "svhn", "stl10", "cifar100"])
def test_random_bytes_in_any_sources_files_are_reported_as_corrupt(tmp_path, source):
    from directclr.errors import CorruptFileError

    WRITERS[source](tmp_path)
    damaged = expected_files(source)[0]
    (tmp_path / damaged).write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CorruptFileError, match="corrupt or incomplete") as error:
        prepare(DataConfig(source=source, root=str(tmp_path)))
    message = str(error.value)
    assert damaged in message and "data_prep.download=true" in message
    if source in ("mnist", "fashion_mnist"):  # read file by file: only the damaged one named
        assert expected_files(source)[1] not in message


def test_mnist_files_that_disagree_on_the_number_of_images_are_reported(tmp_path):
    from directclr.errors import CorruptFileError

    write_mnist(tmp_path)
    _idx(tmp_path / "MNIST/raw/train-labels-idx1-ubyte", np.zeros(30, dtype=np.uint8))
    with pytest.raises(CorruptFileError, match="train files .* hold 40 images but 30 labels"):
        prepare(DataConfig(source="mnist", root=str(tmp_path)))
