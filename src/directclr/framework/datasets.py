"""Kedro datasets for tensors, state dicts and nested dicts of them, loaded safely.

Saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: a file can hold
tensors, numbers, strings, lists and dicts, never arbitrary pickled objects. The one exception,
the encoder checkpoint a user brings to ``analyze``, is read without running the objects it
holds (:class:`EncoderCheckpointDataset`).
"""

from __future__ import annotations

import io
import os
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from directclr.checkpoint_import import load_foreign_checkpoint
from directclr.checkpoints import CheckpointStore, RefusedFileError, safe_load


class TorchDataset(AbstractVersionedDataset[Any, Any]):
    """Loads and saves weights-only torch files (``.pt``) on any fsspec filesystem.

    Example catalog entry::

        directclr.model:
          type: directclr.framework.datasets.TorchDataset
          filepath: data/06_models/directclr/model.pt
          versioned: true
    """

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        fs_args = deepcopy(fs_args) or {}
        protocol, path = get_protocol_and_path(str(filepath), version)
        self._protocol = protocol
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def load(self) -> Any:
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(load_path, mode="rb") as f:
            buffer = io.BytesIO(f.read())
        try:
            return safe_load(buffer, load_path)
        except RefusedFileError as err:
            raise DatasetError(str(err)) from None

    def save(self, data: Any) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        buffer = io.BytesIO()
        torch.save(data, buffer)
        # Written in one piece after serialisation succeeded: no half-written file.
        with self._fs.open(save_path, mode="wb") as f:
            f.write(buffer.getvalue())
        self._fs.invalidate_cache(save_path)

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(load_path)


class EncoderCheckpointDataset(TorchDataset):
    """Reads the encoder checkpoint a user brings to ``analyze``, written by other code.

    ``.safetensors`` files are read as such; torch files weights-only, and when they also hold
    pickled Python objects (hyper-parameters of PyTorch Lightning or timm), with those objects
    replaced by inert placeholders that the import report lists
    (:func:`~directclr.checkpoint_import.load_foreign_checkpoint`). Read-only: the file is the
    user's, never written by a node.
    """

    def load(self) -> Any:
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(load_path, mode="rb") as f:
            data = f.read()
        try:
            return load_foreign_checkpoint(data, load_path)
        except RefusedFileError as err:
            raise DatasetError(str(err)) from None

    def save(self, data: Any) -> None:
        raise DatasetError("the encoder checkpoint is the user's file: analyze never writes it")


class CheckpointDirectory(AbstractDataset[None, CheckpointStore]):
    """Hands the pretraining node a :class:`~directclr.checkpoints.CheckpointStore`.

    Checkpoints are written during training, not returned by a node, so this entry is
    read-only in the pipeline: loading it gives the store for its folder.
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = filepath
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._filepath)

    def save(self, data: None) -> None:
        raise DatasetError("checkpoints are written by the training loop, not saved by a node")

    def _exists(self) -> bool:
        return True
