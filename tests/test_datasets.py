import pytest
import torch
from kedro.io.core import DatasetError, Version

from directclr.framework.datasets import TorchDataset


def test_round_trip_of_nested_tensors(tmp_path):
    ds = TorchDataset(filepath=str(tmp_path / "x.pt"))
    data = {"a": torch.arange(3), "nested": {"b": [1.5, "text"]}}
    ds.save(data)
    loaded = ds.load()
    assert torch.equal(loaded["a"], data["a"]) and loaded["nested"] == data["nested"]


def test_versions_are_kept_side_by_side(tmp_path):
    path = str(tmp_path / "m.pt")
    TorchDataset(filepath=path, version=Version(None, "2026-01-01T00.00.00.000Z")).save(
        {"v": torch.tensor(1)}
    )
    TorchDataset(filepath=path, version=Version(None, "2026-01-02T00.00.00.000Z")).save(
        {"v": torch.tensor(2)}
    )
    assert TorchDataset(filepath=path, version=Version(None, None)).load()["v"] == 2
    old = TorchDataset(filepath=path, version=Version("2026-01-01T00.00.00.000Z", None))
    assert old.load()["v"] == 1


class _NotAllowed:
    pass


def test_arbitrary_pickles_and_corrupt_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"obj": _NotAllowed()}, evil)
    with pytest.raises(DatasetError, match="not a weights-only torch file"):
        TorchDataset(filepath=str(evil)).load()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DatasetError, match="not a weights-only torch file"):
        TorchDataset(filepath=str(corrupt)).load()
