"""Reading torch files safely, and training checkpoints that survive a killed process.

A checkpoint is a weights-only dict (tensors, numbers, strings, lists, dicts), written to a
temporary file, flushed to disk, then renamed over the previous one: at every moment the
directory holds either the old complete checkpoint or the new complete one. While a run
trains, its process holds the run's key (:meth:`CheckpointStore.hold`): a second run of the
same key, which would write the same checkpoint, is refused.

Every torch file of the project is read by :func:`safe_load` (``torch.load(weights_only=True)``),
which refuses a file holding any other pickled object. The one file read otherwise is an encoder
checkpoint a user brings to ``analyze``, written by other code: see
:mod:`directclr.checkpoint_import.foreign`.
"""

from __future__ import annotations

import io
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import torch

from directclr.errors import UserFacingError

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks, so runs of one key are not kept apart
    fcntl = None

# torch's two refusals of a pickled global: not allowed by default, or from a blocked module
# (os, subprocess, ...).
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


class RefusedFileError(UserFacingError, RuntimeError):
    """A torch file that cannot be read safely: corrupt, or needing arbitrary unpickling."""


class RefusedObjectError(RefusedFileError):
    """:func:`safe_load`'s refusal of a file that holds a pickled object (``global_name``)."""

    def __init__(self, message: str, global_name: str) -> None:
        super().__init__(message)
        self.global_name = global_name


def safe_load(file: str | os.PathLike | io.BytesIO, name: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU, for tensors, numbers, strings, lists and
    dicts only. A file that needs more (a pickled object, whose loading could run any code)
    or is damaged raises :class:`RefusedFileError` (:class:`RefusedObjectError` for an
    object) naming what was refused and what to do; the way around the safety check is never
    suggested.

    This stays strict for every file of the project's own (datasets, models, training
    checkpoints): they are written with tensors and plain containers only, so an object in
    one means the file is not what it claims to be. Only ``analyze``'s imported encoder is read
    on after a refusal (:func:`directclr.checkpoint_import.load_foreign_checkpoint`).
    """
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a refused or broken file
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            message = (
                f"{name} is not a weights-only torch file: it holds a pickled Python object "
                f"({refused.group(1)}), and loading such objects could run arbitrary code, so "
                f"it is refused. Save the tensors alone (torch.save(model.state_dict(), path)) "
                f"and use that file"
            )
        else:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            reason = reason if "weights_only" not in reason else ""
            detail = f" ({err.__class__.__name__}{': ' + reason if reason else ''})"
            message = (
                f"{name} is not a weights-only torch file{detail}; it may be truncated, "
                f"corrupt or from another program. Write it again (or restore it), then run "
                f"again"
            )
        if refused:
            raise RefusedObjectError(message, refused.group(1)) from None
        raise RefusedFileError(message) from None


class CheckpointInUseError(UserFacingError, RuntimeError):
    """Another process is training the run a checkpoint key names."""


def first_non_finite(data: Any, key: str = "") -> str | None:
    """Where the first floating tensor holding a NaN or an infinity sits in ``data`` (a tensor,
    or dicts and lists of them such as a state dict or a saved artifact), as a dotted key
    (``model.backbone.features.1.running_var``); None when every one is finite."""
    if isinstance(data, torch.Tensor):
        finite = not data.is_floating_point() or bool(torch.isfinite(data).all())
        return None if finite else key or "the tensor"
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return None
    for name, value in items:
        found = first_non_finite(value, f"{key}.{name}" if key else str(name))
        if found is not None:
            return found
    return None


class CheckpointStore:
    """A folder of checkpoints, one file per run key (a hash of the run's settings)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._held: dict[str, IO[str]] = {}

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def lock_path(self, key: str) -> Path:
        return self.directory / f"{key}.lock"

    def hold(self, key: str) -> None:
        """Claim run ``key`` for this process until :meth:`release` (or until this store is
        dropped): another claim of it, from any process (two ``kedro run`` of the same
        settings and data at once), raises :class:`CheckpointInUseError` naming the holder,
        rather than both training and writing the same checkpoint. The claim is an exclusive
        ``flock`` on ``<key>.lock``: the system drops it when the holding process ends,
        however it ends, so a killed run never leaves its key claimed. Claiming a key this
        store already holds does nothing.

        A second run is refused rather than made to wait: it would compute the same thing,
        and a wait behind a run that takes hours (or is stopped) would look like a hang.
        """
        if fcntl is None or key in self._held:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path(key).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise CheckpointInUseError(
                f"pretraining: run {key} is being trained now by {holder}, which holds "
                f"{self.lock_path(key)}: a run of the same settings and data would write the "
                f"same checkpoint. Wait for that run to end and run again (this run then "
                f"resumes from its checkpoint, at once if it finished), or change a setting "
                f"(e.g. pretraining.seed) to train another run"
            ) from None
        lock.seek(0)
        lock.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        lock.write(f"process {os.getpid()} on {socket.gethostname()} (since {started})")
        lock.flush()
        self._held[key] = lock

    def release(self, key: str) -> None:
        """End this store's claim of ``key`` (:meth:`hold`), if it holds it."""
        lock = self._held.pop(key, None)
        if lock is not None:
            lock.close()

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
            return safe_load(path, f"checkpoint {path}")
        except RefusedFileError as err:
            raise RefusedFileError(
                f"{err}. To train this run afresh instead, delete the checkpoint or set "
                f"resume=false"
            ) from None

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r})"
