"""Training checkpoints that survive a killed process.

A checkpoint is a weights-only dict (tensors, numbers, strings, lists, dicts), written to a
temporary file, flushed to disk, then renamed over the previous one: at every moment the
directory holds either the old complete checkpoint or the new complete one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class CheckpointStore:
    """A folder of checkpoints, one file per run key (a hash of the run's settings)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def save(self, key: str, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load(self, key: str) -> dict[str, Any] | None:
        """The checkpoint for ``key``, or None when there is none."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a foreign or damaged file must not be unpickled
            raise RuntimeError(
                f"checkpoint {path} cannot be loaded safely ({err.__class__.__name__}); "
                f"delete it to start this run afresh, or set resume=false"
            ) from err

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r})"
