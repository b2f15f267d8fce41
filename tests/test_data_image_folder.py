"""The user's own images: folders written by the tests, with the faults real folders have."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image

from directclr.data import (
    DataConfig,
    ImageFolderSplit,
    decode_image,
    iterate_batches,
    materialize,
    prepare,
    to_channels,
)

REPO = Path(__file__).resolve().parents[1]
# Solid colours, so every decoded pixel and every channel statistic is known exactly.
COLOURS = {"bird": [(10, 200, 30), (20, 190, 40)], "cat": [(250, 0, 0), (200, 50, 0)],
           "dog": [(0, 0, 255), (0, 60, 120)]}  # fmt: skip


def write_image(path: Path, colour: tuple[int, ...], size=(12, 9), mode="RGB", fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = colour if mode == "RGB" else colour[0]
    Image.new(mode, size, value).save(path, format=fmt)


def write_folder(root: Path, per_class: int = 6) -> Path:
    """Three classes of solid-colour PNGs in assorted sizes, plus the usual debris: a broken
    JPEG, a truncated PNG, a text file, an empty class folder and a hidden file."""
    for name, colours in COLOURS.items():
        for i in range(per_class):
            size = (12 + i, 9 + 2 * i)
            write_image(root / name / f"{i}.png", colours[i % 2], size)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = root / "cat" / "0.png"
    (root / "cat" / "nested").mkdir()
    (root / "cat" / "nested" / "truncated.png").write_bytes(good.read_bytes()[:45])
    (root / "cat" / "notes.txt").write_text("labels were checked by hand")
    (root / "empty").mkdir()
    (root / ".DS_Store").write_bytes(b"\0")
    return root


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """data_prep.cache_dir is relative to the working folder: keep the caches in tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images")


def config(root: Path, **overrides) -> DataConfig:
    return DataConfig(source="image_folder", root=str(root), num_workers=0, **overrides)


def test_manifest_lists_readable_images_per_split_and_the_card_lists_the_rest(folder):
    manifest, card = prepare(config(folder, image_size=8, test_fraction=0.5))
    assert manifest["kind"] == "manifest" and manifest["classes"] == ["bird", "cat", "dog"]
    assert manifest["image_size"] == 8 and manifest["channels"] == 3
    paths = manifest["train_paths"] + manifest["test_paths"]
    assert len(paths) == 18 and len(set(paths)) == 18
    assert all(not Path(p).is_absolute() and (folder / p).is_file() for p in paths)
    for path, label in zip(manifest["train_paths"], manifest["train_labels"].tolist(), strict=True):
        assert path.split("/")[0] == manifest["classes"][label]
    # The split is drawn over all 20 image files; the two unreadable ones leave theirs short.
    assert card["counts"]["train"] + card["counts"]["test"] == 18
    assert card["counts_per_class"]["test"]["bird"] == 3
    assert sum(card["counts_per_class"]["train"].values()) == len(manifest["train_paths"])
    assert sorted(f["path"] for f in card["skipped_files"]) == [
        "cat/nested/truncated.png",
        "dog/broken.jpg",
    ]
    assert card["skipped_count"] == 2 and all(f["reason"] for f in card["skipped_files"])
    assert card["ignored_files"] == ["cat/notes.txt"]
    assert card["empty_class_folders"] == ["empty"]
    assert card["image_shape"] == [3, 8, 8] and card["source_channels"] == {"grey": 0, "colour": 18}
    assert card["layout"] == "class_folders"


def test_channel_statistics_are_those_of_the_training_images(folder):
    manifest, card = prepare(config(folder, image_size=8))
    colours = [COLOURS[p.split("/")[0]][int(Path(p).stem) % 2] for p in manifest["train_paths"]]
    expected_mean = np.array(colours, dtype=np.float64).mean(0) / 255
    expected_std = np.array(colours, dtype=np.float64).std(0) / 255
    np.testing.assert_allclose(card["channel_mean"], expected_mean, rtol=1e-12)
    np.testing.assert_allclose(card["channel_std"], expected_std, rtol=1e-12, atol=1e-15)


def test_batches_decode_in_workers_in_manifest_order_or_shuffled_by_seed(folder):
    manifest, _ = prepare(config(folder, image_size=8))
    batches = list(iterate_batches(manifest, "train", batch_size=5, num_workers=2))
    assert [len(labels) for _, labels in batches] == [5, 5, 4]
    images = torch.cat([x for x, _ in batches])
    assert images.dtype == torch.uint8 and images.shape == (14, 3, 8, 8)
    assert torch.equal(torch.cat([y for _, y in batches]), manifest["train_labels"])
    first = manifest["train_paths"][0]
    colour = COLOURS[first.split("/")[0]][int(Path(first).stem) % 2]
    assert images[0, :, 3, 3].tolist() == list(colour)
    assert torch.equal(materialize(manifest, "train"), images)

    def order(seed):
        return torch.cat([y for _, y in iterate_batches(manifest, "train", 4, True, seed)])

    assert torch.equal(order(1), order(1))
    assert sorted(order(1).tolist()) == sorted(manifest["train_labels"].tolist())
    assert any(not torch.equal(order(1), order(s)) for s in (2, 3, 4))


def test_materialize_passes_tensor_artifacts_through(digits):
    dataset, _ = digits
    assert materialize(dataset, "test") is dataset["test_images"]


def test_grey_majority_makes_grey_images_and_channels_can_be_forced(tmp_path):
    root = tmp_path / "mixed"
    for i in range(4):
        write_image(root / "a" / f"g{i}.png", (60 + i,), mode="L")
        write_image(root / "b" / f"g{i}.png", (180 + i,), mode="L")
    write_image(root / "a" / "c.png", (255, 0, 0))
    write_image(root / "b" / "c.jpg", (0, 0, 255), fmt="JPEG")
    manifest, card = prepare(config(root, image_size=8, test_fraction=0.4))
    assert card["channels"] == 1 and card["source_channels"] == {"grey": 8, "colour": 2}
    grey = materialize(manifest, "train")
    assert grey.shape[1:] == (1, 8, 8)
    forced, card3 = prepare(config(root, image_size=8, test_fraction=0.4, channels=3))
    colour = materialize(forced, "train")
    assert card3["image_shape"] == [3, 8, 8] and forced["train_paths"] == manifest["train_paths"]
    # Grey from a folder is the luma of its RGB pixels, exactly as for tensor sources.
    assert torch.equal(to_channels(colour, 1), grey)
    assert card["content_hash"] != card3["content_hash"]


def test_shorter_side_is_resized_then_centre_cropped(tmp_path):
    path = tmp_path / "wide.png"
    image = np.zeros((10, 30, 3), dtype=np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, 10:20] = (0, 255, 0)
    image[:, 20:] = (0, 0, 255)
    Image.fromarray(image).save(path)
    centre = decode_image(path, 10, 3)
    assert centre.shape == (3, 10, 10) and (centre[1] == 255).all() and (centre[0] == 0).all()
    assert decode_image(path, 20, 1).shape == (1, 20, 20)


def test_content_hash_follows_the_file_bytes_whatever_the_workers(folder):
    manifest, card = prepare(config(folder))
    in_workers = DataConfig(source="image_folder", root=str(folder), num_workers=2)
    same_manifest, same = prepare(in_workers)  # decoded in two worker processes
    assert same == card and same_manifest["train_paths"] == manifest["train_paths"]
    write_image(folder / "bird" / "0.png", (11, 200, 30), (12, 9))
    _, changed = prepare(config(folder))
    assert changed["content_hash"] != card["content_hash"]


def test_train_and_val_folders_give_the_test_split_and_val_comes_from_train(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 10), ("val", 3)):
        for name in ("n01", "n02"):
            for i in range(n):
                write_image(root / split / name / f"{i}.png", (i * 20, 0, 0))
    manifest, card = prepare(config(root, val_fraction=0.2, max_samples=6))
    assert card["layout"] == "train/val"
    assert card["counts"] == {"train": 6, "val": 4, "test": 6}
    assert all(p.startswith("val/") for p in manifest["test_paths"])
    assert all(p.startswith("train/") for p in manifest["train_paths"] + manifest["val_paths"])
    assert not set(manifest["train_paths"]) & set(manifest["val_paths"])
    assert manifest["val_labels"].tolist() == [0, 0, 1, 1]
    assert len(ImageFolderSplit(manifest, "val")) == 4
    with pytest.raises(KeyError, match="no unlabeled split; it has train, val, test"):
        ImageFolderSplit(manifest, "unlabeled")


def test_a_test_class_that_train_lacks_is_an_error(tmp_path):
    root = tmp_path / "split"
    write_image(root / "train" / "cat" / "0.png", (1, 2, 3))
    write_image(root / "train" / "cat" / "1.png", (1, 2, 3))
    write_image(root / "val" / "cat" / "0.png", (1, 2, 3))
    write_image(root / "val" / "zebra" / "0.png", (1, 2, 3))
    with pytest.raises(ValueError, match=r"zebra in .*val have no images in .*train"):
        prepare(config(root))
    shutil.rmtree(root / "val" / "zebra")
    (root / "test").mkdir()
    with pytest.raises(ValueError, match="both val/ and test/"):
        prepare(config(root))


def test_an_unsorted_val_folder_is_explained(tmp_path):
    root = tmp_path / "flat"
    write_image(root / "train" / "cat" / "0.png", (1, 2, 3))
    write_image(root / "val" / "ILSVRC2012_val_00000001.JPEG", (1, 2, 3), fmt="JPEG")
    with pytest.raises(ValueError, match="holds images directly, not in class sub-folders"):
        prepare(config(root))


def test_folders_without_readable_images_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root=.*missing is not a folder.*data_prep.root"):
        prepare(config(tmp_path / "missing"))
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images under"):
        prepare(config(empty))
    broken = tmp_path / "broken"
    for name in ("cat", "dog"):
        broken.joinpath(name).mkdir(parents=True)
        for i in range(2):
            (broken / name / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 4 image files .* could be decoded"):
        prepare(config(broken, test_fraction=0.5))
    for i in range(2):
        write_image(broken / "dog" / f"{i}.jpg", (0, 0, 9), fmt="JPEG")
    with pytest.raises(ValueError, match="class.*cat have no readable training images"):
        prepare(config(broken, test_fraction=0.5))


def test_a_changed_file_names_itself_when_decoded_later(folder):
    # Without the cache: with it, training reads the pixels data_prep decoded.
    manifest, _ = prepare(config(folder, cache=False))
    (folder / manifest["test_paths"][0]).write_bytes(b"overwritten")
    with pytest.raises(OSError, match="readable when data_prep ran.*rerun data_prep"):
        materialize(manifest, "test")


def test_data_prep_pipeline_writes_a_versioned_manifest_and_card(project, monkeypatch):
    monkeypatch.chdir(project)  # kedro runs in the project root; data_prep.root is relative
    write_folder(project / "data" / "01_raw" / "pets")
    params = {"data_prep": {"source": "image_folder", "root": "data/01_raw/pets",
                            "image_size": 16, "num_workers": 0}}  # fmt: skip
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["data_prep"])
        catalog = session.load_context().catalog
        manifest = catalog.load("dataset")  # through TorchDataset, weights_only=True
    (card_version,) = (project / "data" / "03_primary" / "dataset_card.json").iterdir()
    card = json.loads((card_version / "dataset_card.json").read_text())
    assert manifest["root"] == "data/01_raw/pets" and manifest["image_size"] == 16
    assert card["counts"] == {"train": 14, "test": 4} and card["skipped_count"] == 2
    assert isinstance(manifest["train_labels"], torch.Tensor)
    # The decoded images live outside the versioned datasets, named by their key.
    cache = Path(manifest["cache"]["path"])
    assert cache.parent == Path("data/02_intermediate/image_cache")
    assert (project / cache / "images.npy").is_file() and cache.name == manifest["cache"]["key"]

    with (
        pytest.raises(Exception, match="max_samples"),
        KedroSession.create(
            project_path=project, runtime_params={"data_prep": {"max_samples": 0}}
        ) as session,
    ):
        session.run(pipeline_names=["data_prep"])
    assert len(list((project / "data" / "03_primary" / "dataset.pt").iterdir())) == 1


def test_the_whole_directclr_pipeline_streams_an_image_folder(project, monkeypatch):
    monkeypatch.chdir(project)
    write_folder(project / "data" / "01_raw" / "pets", per_class=12)
    tiny = {"epochs": 1, "batch_size": 8, "width": 4, "warmup_epochs": 0, "num_workers": 0}
    params = {
        "data_prep": {"source": "image_folder", "root": "data/01_raw/pets", "image_size": 12,
                      "num_workers": 0},
        "pretraining": tiny,
        "directclr": {"pretraining": {"d0": 8}},
        "embeddings": {"num_workers": 0, "batch_size": 5},
        "linear_eval": {"C_grid": [1.0], "max_iter": 100},
    }  # fmt: skip
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["directclr"])
        catalog = session.load_context().catalog
        manifest = catalog.load("dataset")
        embeddings = catalog.load("directclr.embeddings")
        metrics = catalog.load("directclr.linear_eval_metrics")
    assert embeddings["train_r"].shape == (len(manifest["train_paths"]), 32)
    assert embeddings["test_z"].shape == (len(manifest["test_paths"]), 8)
    assert torch.equal(embeddings["test_labels"], manifest["test_labels"])
    assert 0 <= metrics["linear_probe_accuracy_r"] <= 1
    assert metrics["linear_probe_accuracy_raw_pixels"] is not None
