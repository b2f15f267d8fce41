import numpy as np
import pytest
import torch

from directclr.data import DataConfig, prepare


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


def test_split_depends_on_seed_and_nothing_else():
    a, _ = prepare(DataConfig(seed=1))
    b, _ = prepare(DataConfig(seed=1))
    c, _ = prepare(DataConfig(seed=2))
    assert torch.equal(a["test_labels"], b["test_labels"])
    assert not torch.equal(a["test_images"], c["test_images"])


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="source"):
        DataConfig(source="imagenet21k")
