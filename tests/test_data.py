import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from directclr.data import (
    DataConfig,
    channel_stats,
    prepare,
    resize,
    stratified_subset,
    to_channels,
)


def test_digits_split_is_stratified_uint8_and_described_by_its_card(digits):
    dataset, card = digits
    assert dataset["train_images"].dtype == torch.uint8
    assert dataset["train_images"].shape[1:] == (1, 8, 8)
    assert card["counts"] == {"train": 1437, "test": 360}
    assert card["image_shape"] == [1, 8, 8]
    assert card["classes"] == [str(i) for i in range(10)]
    test_counts = np.bincount(dataset["test_labels"].numpy())
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # 10 classes of ~180, 20%
    assert int(dataset["train_images"].max()) == 255
    assert 0.2 < card["channel_mean"][0] < 0.4 and 0.3 < card["channel_std"][0] < 0.5


def test_digits_default_split_and_statistics_are_unchanged(digits):
    dataset, card = digits
    # The first rows and the statistics the project has always produced with seed 0.
    assert dataset["test_indices"][:5].tolist() == [21, 24, 28, 34, 35]
    assert dataset["train_indices"][:5].tolist() == [0, 1, 2, 3, 4]
    assert card["channel_mean"] == [0.305433688785187]
    assert card["channel_std"] == [0.37595716498559817]
    assert card["content_hash"].startswith("sha256:") and len(card["content_hash"]) == 71
    assert card["skipped_files"] == [] and "val" not in card["counts"]


def test_split_indices_point_back_into_the_source(digits):
    from sklearn.datasets import load_digits

    dataset, _ = digits
    source = load_digits()
    rows = dataset["test_indices"].numpy()
    assert torch.equal(dataset["test_labels"], torch.from_numpy(source.target[rows]))
    assert set(rows).isdisjoint(dataset["train_indices"].numpy())
    assert len(rows) + len(dataset["train_indices"]) == len(source.target)


def test_split_depends_on_seed_and_nothing_else():
    a, card_a = prepare(DataConfig(seed=1))
    b, card_b = prepare(DataConfig(seed=1))
    c, card_c = prepare(DataConfig(seed=2))
    assert torch.equal(a["test_labels"], b["test_labels"])
    assert card_a["content_hash"] == card_b["content_hash"] != card_c["content_hash"]
    assert not torch.equal(a["test_images"], c["test_images"])


def test_validation_split_comes_out_of_train_stratified_and_by_seed():
    dataset, card = prepare(DataConfig(val_fraction=0.25))
    assert card["counts"] == {"train": 1077, "val": 360, "test": 360}
    train, val = dataset["train_indices"].numpy(), dataset["val_indices"].numpy()
    test = dataset["test_indices"].numpy()
    assert not set(train) & set(val) and not set(val) & set(test)
    assert np.bincount(dataset["val_labels"].numpy()).min() >= 35
    assert card["counts_per_class"]["val"]["0"] == int((dataset["val_labels"] == 0).sum())
    # The test split is the same one the default run uses.
    default, _ = prepare(DataConfig())
    assert torch.equal(default["test_indices"], dataset["test_indices"])
    again, _ = prepare(DataConfig(val_fraction=0.25))
    assert torch.equal(again["val_indices"], dataset["val_indices"])


def test_max_samples_caps_every_split_stratified():
    dataset, card = prepare(DataConfig(max_samples=100, val_fraction=0.2))
    assert card["counts"] == {"train": 100, "val": 100, "test": 100}
    for split in ("train", "val", "test"):
        assert np.bincount(dataset[f"{split}_labels"].numpy()).tolist() == [10] * 10


def test_stratified_subset_keeps_class_shares_and_exact_size():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    rows = stratified_subset(labels, 20, seed=0)
    assert len(rows) == 20 and np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [10, 6, 3, 1]
    # Fewer rows than classes: still exactly that many, by largest remainder (1.5, .9, .45).
    few = labels[stratified_subset(labels, 3, seed=0)]
    assert np.bincount(few, minlength=4).tolist() == [2, 1, 0, 0]
    assert not np.array_equal(stratified_subset(labels, 20, 1), rows)


def test_image_size_and_channels_options_reshape_the_images():
    dataset, card = prepare(DataConfig(image_size=16, channels=3, max_samples=50))
    assert dataset["train_images"].shape == (50, 3, 16, 16)
    assert card["image_shape"] == [3, 16, 16] and card["channels"] == 3
    assert card["source_channels"] == 1
    r, g, b = dataset["train_images"].unbind(1)
    assert torch.equal(r, g) and torch.equal(g, b)
    assert len(card["channel_mean"]) == 3 and card["channel_mean"][0] == card["channel_mean"][2]


def test_to_channels_uses_pil_luma_and_resize_keeps_flat_images_flat():
    from PIL import Image

    rgb = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8)
    grey = to_channels(rgb, 1)
    pil = np.asarray(Image.fromarray(rgb[2].permute(1, 2, 0).numpy()).convert("L"))
    assert grey.shape == (4, 1, 5, 7) and np.array_equal(grey[2, 0].numpy(), pil)
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(resize(flat, 12), torch.full((2, 3, 12, 12), 77, dtype=torch.uint8))


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=3)
    x = images.double().numpy() / 255
    np.testing.assert_allclose(mean, x.mean((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std((0, 2, 3)), rtol=1e-12)


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="source"):
        DataConfig(source="imagenet21k")


@pytest.mark.parametrize(
    ("override", "parameter"),
    [
        ({"max_samples": 0}, "max_samples"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": 0}, "test_fraction"),
        ({"image_size": 4}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": "many"}, "num_workers"),
        ({"download": True}, "download"),
        ({"source": "image_folder", "download": True}, "download"),
        ({"batch": 3}, "batch"),
    ],
)
def test_bad_parameters_fail_in_the_model_naming_the_parameter(override, parameter):
    with pytest.raises(ValidationError, match=parameter):
        DataConfig(**override)


def test_auto_workers_share_the_cpus_this_process_may_use(monkeypatch):
    from directclr.devices import resolve_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers("auto") == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine
    assert resolve_workers("auto") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert resolve_workers("auto") == 1  # never 0: decoding stays out of the training loop
    assert resolve_workers(0) == 0 and resolve_workers(5) == 5
    assert DataConfig().num_workers == "auto"


def test_a_split_that_cannot_be_stratified_names_its_parameter():
    with pytest.raises(ValueError, match="val_fraction=0.001"):
        prepare(DataConfig(val_fraction=0.001))
