"""Kedro datasets for tensors, state dicts and nested dicts of them, loaded safely.

Saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: a file can hold
tensors, numbers, strings, lists and dicts, never arbitrary pickled objects. The one exception,
the encoder checkpoint a user brings to ``analyze``, is read without running the objects it
holds (:class:`EncoderCheckpointDataset`).

Every artifact proves itself when it is read: a torch file that is not one, a tensor that is
not finite, a model that cannot be rebuilt, a dataset whose content differs from its card's
hash, a JSON file that does not parse or a table without its columns is refused, naming the
version file and the stage that writes it (``stage`` in the catalog entry). Every artifact is
written to a temporary file beside it, flushed to disk and renamed into place, as training
checkpoints are: a full disk or a killed process never leaves a half-written version behind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import pandas as pd
import torch
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset

from directclr.checkpoint_import import load_foreign_checkpoint
from directclr.checkpoints import (
    CheckpointStore,
    RefusedFileError,
    first_non_finite,
    safe_load,
)
from directclr.data.card import check_content
from directclr.errors import CorruptFileError, UserFacingError
from directclr.models import model_from_artifact

logger = logging.getLogger(__name__)
_DAMAGED = ": it is damaged or was not written by this project"


class DamagedArtifactError(DatasetError, CorruptFileError):
    """An artifact refused when read: the message names its version file and the stage that
    writes it (a :class:`DatasetError` for Kedro, shown as its message alone to the user)."""


class UnwritableFolderError(UserFacingError, PermissionError):
    """A folder a run would write to cannot be written or created: found before any work."""


def _rerun(stage: str | None) -> str:
    """What to do about a refused artifact: rerun the stage that writes it."""
    if stage is None:
        return "Write it again (or restore it), then run again"
    return f"Rerun the stage that writes it ({stage}) or restore the file, then run again"


def _refused(path: str, problem: str, stage: str | None) -> DamagedArtifactError:
    """The refusal of the artifact at ``path``, saying what is wrong and what to do."""
    return DamagedArtifactError(f"{path} {problem}. {_rerun(stage)}")


def write_atomically(fs: Any, protocol: str, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: on a local disk, to a temporary file in
    the same folder, flushed to disk, then renamed over ``path`` (a failed write, a full disk
    or a killed process leaves no file at ``path``, and removes the version folder it made
    when that stays empty); elsewhere, in one write once serialised."""
    if protocol != "file":
        with fs.open(path, mode="wb") as f:
            f.write(data)
        fs.invalidate_cache(path)
        return
    target = Path(path)
    made = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if made and not any(target.parent.iterdir()):
            target.parent.rmdir()
        raise
    fs.invalidate_cache(path)


class TorchDataset(AbstractVersionedDataset[Any, Any]):
    """Loads and saves weights-only torch files (``.pt``) on any fsspec filesystem.

    Example catalog entry::

        directclr.model:
          type: directclr.framework.datasets.TorchDataset
          filepath: data/06_models/directclr/model.pt
          versioned: true
          stage: pretraining

    A file that is not a weights-only torch file, or whose floating tensors are not all
    finite, is refused; subclasses check what their artifact must be (:meth:`check`).
    """

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        stage: str | None = None,
    ) -> None:
        """``stage``: the stage that writes the file, named when a damaged one is refused."""
        self._stage = stage
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
            data = safe_load(buffer, load_path)
        except RefusedFileError as err:
            message = str(err).replace(_rerun(None), _rerun(self._stage))
            raise DamagedArtifactError(message) from None
        found = first_non_finite(data)
        if found is not None:
            problem = f"holds NaN or infinite values (in {found})"
            raise _refused(
                load_path, f"{problem}: it is damaged, or what wrote it failed", self._stage
            )
        self.check(data, load_path)
        return data

    def check(self, data: Any, path: str) -> None:
        """Refuse (raise :class:`DatasetError`) a loaded artifact that cannot be what this
        entry holds; nothing more to check for any torch file."""

    def save(self, data: Any) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        buffer = io.BytesIO()
        torch.save(data, buffer)
        write_atomically(self._fs, self._protocol, save_path, buffer.getvalue())

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(load_path)


class PreparedDataset(TorchDataset):
    """The prepared dataset (``dataset.pt``), checked against the content hash its card
    (``card``: the card entry's filepath, versioned alike) recorded: a file altered since
    data_prep wrote it is refused before any stage trains or measures on it."""

    def __init__(self, *, card: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._card = card

    def check(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise _refused(path, "does not hold a prepared dataset" + _DAMAGED, self._stage)
        version = Version(self.resolve_load_version(), None)
        card = CheckedJSONDataset(filepath=self._card, version=version, stage=self._stage)
        if not card.exists():
            logger.warning("%s has no dataset card beside it: its content is not checked", path)
            return
        try:
            check_content(data, card.load(), path)
        except ValueError as err:
            raise DamagedArtifactError(str(err)) from None


class ModelDataset(TorchDataset):
    """A saved model (``model.pt``): refused unless its architecture can be rebuilt and its
    state dict loaded into it, tensor for tensor, shape for shape."""

    def check(self, data: Any, path: str) -> None:
        try:
            model_from_artifact(data)
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as err:
            reason = " ".join(str(err).split())
            reason = reason if len(reason) <= 400 else f"{reason[:400]}..."
            problem = f"is not a model this version can rebuild ({type(err).__name__}: {reason})"
            problem += _DAMAGED
            raise _refused(path, problem, self._stage) from None


class EmbeddingsDataset(TorchDataset):
    """Exported embeddings (``embeddings.pt``): refused unless every split's r and z are
    matrices with one row per label."""

    def check(self, data: Any, path: str) -> None:
        if not isinstance(data, dict) or "train_labels" not in data:
            raise _refused(path, "does not hold exported embeddings" + _DAMAGED, self._stage)
        for split in ("train", "val", "test"):
            if f"{split}_labels" not in data:
                continue
            rows = len(data[f"{split}_labels"])
            for kind in ("r", "z"):
                tensor = data.get(f"{split}_{kind}")
                if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2 or len(tensor) != rows:
                    shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
                    problem = (
                        f"holds {split}_{kind} of shape {shape} for {rows} {split} labels{_DAMAGED}"
                    )
                    raise _refused(path, problem, self._stage)


class CheckedJSONDataset(JSONDataset):
    """kedro-datasets' JSONDataset, refusing a file that is not JSON with the version file's
    path and the stage that writes it (``stage``), and written atomically."""

    def __init__(self, *, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stage = stage

    def load(self) -> Any:
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        try:
            with self._fs.open(load_path, **self._fs_open_args_load) as f:
                return json.load(f)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _refused(load_path, f"is not valid JSON ({err}){_DAMAGED}", self._stage) from None

    def save(self, data: Any) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        text = json.dumps(data, **self._save_args)
        write_atomically(self._fs, self._protocol, save_path, text.encode())
        self._invalidate_cache()


class CheckedCSVDataset(CSVDataset):
    """kedro-datasets' pandas CSVDataset, refusing a file that does not parse or lacks a
    column the readers need (``columns``), with the version file's path and the stage that
    writes it (``stage``), and written atomically."""

    def __init__(
        self, *, stage: str | None = None, columns: list[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._stage = stage
        self._columns = list(columns or [])

    def load(self) -> pd.DataFrame:
        load_path = str(self._get_load_path())
        try:
            table = super().load.__wrapped__(self)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise _refused(
                load_path, f"is not a readable CSV table ({reason}){_DAMAGED}", self._stage
            ) from None
        missing = [column for column in self._columns if column not in table.columns]
        if missing:
            problem = (f"lacks the columns {', '.join(missing)} (it has "
                       f"{', '.join(map(str, table.columns)) or 'none'}){_DAMAGED}")  # fmt: skip
            raise _refused(load_path, problem, self._stage)
        return table

    def save(self, data: pd.DataFrame) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        text = data.to_csv(**self._save_args)
        write_atomically(self._fs, self._protocol, save_path, text.encode())
        self._invalidate_cache()


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
