"""Reading an encoder checkpoint written by other code, without running anything it names.

:func:`load_foreign_checkpoint` reads the one file a user brings to ``analyze``: weights-only
when it can, and otherwise with :func:`load_with_placeholders`, which rebuilds tensors and plain
containers and puts an inert :class:`UnreadableObject` where any other pickled object was (the
hyper-parameters PyTorch Lightning, solo-learn and timm save beside the weights), importing and
calling nothing the file names. ``.safetensors`` files hold no pickle at all. Every other torch
file of the project stays with :func:`directclr.checkpoints.safe_load`, which refuses objects.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from typing import Any

import torch

from directclr.checkpoints import RefusedFileError, RefusedObjectError, safe_load

logger = logging.getLogger(__name__)


class UnreadableObject:
    """Stands in for a pickled object that :func:`load_with_placeholders` does not rebuild; it
    keeps only the object's global (``module.name``), for the import report.

    The file's instructions for the object (call it with arguments, set its state, fill it as
    a list, set or dict) are accepted and discarded, so the rest of the file still reads and
    nothing the file names is imported or run.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> UnreadableObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unreadable {self.global_name}>"


def placeholder_name(value: Any) -> str | None:
    """The global an :class:`UnreadableObject` (or its class, stored as a value) stands for;
    None for anything else."""
    if isinstance(value, UnreadableObject):
        return value.global_name
    if isinstance(value, type) and issubclass(value, UnreadableObject):
        return value.global_name
    return None


class _StorageKind:
    """A storage type named in the file (``torch FloatStorage``): only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """The bytes of one storage record, as an untyped storage, with the dtype it was saved as."""

    def __init__(self, data: torch.UntypedStorage, dtype: torch.dtype) -> None:
        self.data, self.dtype = data, dtype


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}  # fmt: skip


def _tensor(
    storage: Any, offset: int, size: Any, stride: Any, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A CPU tensor viewing ``storage``; nothing else of the file's tensor is applied (its
    gradient flag, hooks and metadata do not change the values)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor whose storage is {storage!r}, not a storage")
    return torch.empty(0, dtype=dtype or storage.dtype).set_(
        storage.data, offset, tuple(size), tuple(stride)
    )


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any) -> torch.Tensor:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, *_ignored: Any) -> torch.Tensor:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, _grad, _hooks, dtype, *_ignored: Any):
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"a tensor whose dtype is {dtype!r}")
    return _tensor(storage, offset, size, stride, dtype)


def _latin1_bytes(text: str, encoding: str = "latin1", *_ignored: Any) -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes, and no other codec (looking
    up a codec by a name from the file could import modules)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"an encoding other than latin1 ({encoding!r})")
    return text.encode("latin1")


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """A saved ``nn.Parameter`` as its tensor (what a state dict holds)."""
    return data


# The globals a file may name and what they become; every other global is a placeholder.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    # Pickle protocol 2 (torch.save's) names the builtins module by its Python 2 name.
    **{(module, n): getattr(builtins, n)
       for module in ("builtins", "__builtin__")
       for n in ("set", "frozenset", "list", "dict", "tuple", "bytes", "bytearray", "complex")},
    ("_codecs", "encode"): _latin1_bytes,  # how pickle protocol 2 writes bytes
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("torch", n): _StorageKind(d) for n, d in _STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): _StorageKind(torch.uint8),
    **{("torch", n): d for n, d in vars(torch).items() if isinstance(d, torch.dtype)},
}  # fmt: skip


class _PlaceholderUnpickler(pickle.Unpickler):
    """Unpickles a torch zip archive's ``data.pkl``: allowed globals as themselves (tensor
    rebuilding replaced by :func:`_tensor`), every other one as a new subclass of
    :class:`UnreadableObject` that records the name and is never imported."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")), encoding="utf-8")
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, _Storage] = {}
        self._placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key not in self._placeholders:
            global_name = f"{module}.{name}"
            self._placeholders[key] = type(
                "Unreadable", (UnreadableObject,), {"global_name": global_name}
            )
        return self._placeholders[key]

    def persistent_load(self, saved_id: Any) -> _Storage:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent record {saved_id!r}")
        _, kind, key, _location, numel = saved_id
        if not isinstance(kind, _StorageKind):
            raise pickle.UnpicklingError(f"a storage of unknown type {kind!r}")
        key = str(key)
        if key not in self._storages:
            data = self._archive.read(f"{self._prefix}data/{key}")
            expected = int(numel) * torch.empty((), dtype=kind.dtype).element_size()
            if len(data) != expected:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {len(data)} bytes instead of {expected}"
                )
            raw = (
                torch.frombuffer(bytearray(data), dtype=torch.uint8)
                if data
                else torch.empty(0, dtype=torch.uint8)
            )
            self._storages[key] = _Storage(raw.untyped_storage(), kind.dtype)
        return self._storages[key]


_RESAVE = (
    "Load it in the program that wrote it and save the tensors alone "
    "(torch.save(model.state_dict(), path)), then use that file"
)


def _is_torchscript(data: bytes) -> bool:
    """True for a zip archive written by ``torch.jit.save`` (it has ``constants.pkl``)."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


def load_with_placeholders(file: str | os.PathLike | io.BytesIO, name: str) -> Any:
    """A torch file (the zip format of torch >= 1.6) read without running any code it names:
    tensors, numbers, strings, lists, dicts and ``OrderedDict`` as saved, and an
    :class:`UnreadableObject` wherever any other object was (an ``argparse.Namespace`` of
    hyper-parameters, a config object, a whole pickled model). Tensors come on the CPU.

    Raises :class:`RefusedFileError` for a file this cannot read (torch's legacy format, a
    TorchScript archive, a big-endian file, a damaged archive), saying what to do.
    """
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as err:
        raise RefusedFileError(
            f"{name} holds pickled Python objects and is not in torch's zip format (it is "
            f"damaged, or from torch older than 1.6: {err}), so its tensors cannot be read "
            f"without running them. {_RESAVE}"
        ) from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.endswith("/constants.pkl") for n in names):
            raise RefusedFileError(
                f"{name} is a TorchScript archive (torch.jit.save), whose code would have to "
                f"run to read it. {_RESAVE}"
            )
        if len(pickles) != 1:
            raise RefusedFileError(f"{name} is a zip file but not a torch file. {_RESAVE}")
        prefix = pickles[0].removesuffix("data.pkl")
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode(errors="replace").strip()
            if order != sys.byteorder:
                raise RefusedFileError(
                    f"{name} was written on a {order}-endian machine and this one is "
                    f"{sys.byteorder}-endian. {_RESAVE}"
                )
        try:
            return _PlaceholderUnpickler(archive, prefix).load()
        except Exception as err:  # a damaged pickle raises many types
            raise RefusedFileError(
                f"{name} could not be read ({err.__class__.__name__}: {err}); it may be "
                f"truncated or corrupt. Write it again (or restore it), then run again"
            ) from None


def load_safetensors(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (a format of raw tensors and a JSON header: nothing
    is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, ValueError, OSError) as err:
        raise RefusedFileError(
            f"{name} is not a readable safetensors file ({err}); it may be truncated, corrupt or "
            f"in another format (a torch file needs another suffix, e.g. .pt)"
        ) from None


def load_foreign_checkpoint(data: bytes, name: str) -> Any:
    """An encoder checkpoint brought to ``analyze`` from other code, by its name's suffix:
    ``.safetensors`` by :func:`load_safetensors`; anything else by
    :func:`~directclr.checkpoints.safe_load`, and when that refuses a pickled object, by
    :func:`load_with_placeholders`.

    Why the placeholders here and nowhere else: training code of other projects saves its
    weights next to Python objects (PyTorch Lightning's and solo-learn's ``hyper_parameters``,
    timm's ``args``), which weights-only loading refuses although the tensors are all that is
    used. The placeholder reader never imports or calls what the file names, so the file is
    read as safely as a weights-only one; each object it skipped is listed by the import
    report (``unreadable_entries``), and one standing where the weights should be (a whole
    pickled model) stops the import with the advice to save a state dict.
    """
    if name.lower().endswith(".safetensors"):
        return load_safetensors(data, name)
    if _is_torchscript(data):
        raise RefusedFileError(
            f"{name} is a TorchScript archive (torch.jit.save), whose code would have to run to "
            f"read it. {_RESAVE}"
        )
    try:
        return safe_load(io.BytesIO(data), name)
    except RefusedObjectError as err:
        logger.info(
            "%s holds pickled objects (%s first); reading its tensors with those objects left out",
            name,
            err.global_name,
        )
    return load_with_placeholders(io.BytesIO(data), name)
