import pytest
import torch

from directclr.data import DataConfig, prepare


@pytest.fixture(scope="session")
def digits():
    """The bundled digits, split as data_prep does by default: (dataset, card)."""
    return prepare(DataConfig())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
