"""The layouts foreign checkpoints come in, taken apart into a backbone and a projector.

A checkpoint's weights may sit inside ``state_dict`` / ``model`` wrappers (a PyTorch Lightning or
solo-learn ``.ckpt``) or timm's EMA wrappers ``state_dict_ema`` / ``model_ema``, and carry the
``module.`` prefix of DistributedDataParallel (or ``_orig_mod.`` of ``torch.compile``):
:func:`flatten_checkpoint` removes both. :func:`take_apart` then finds the backbone under an entry
(the paper's ``backbone``) or as the whole state dict, and the projector under another entry;
:func:`resnet_from_sequential` gives lightly's ``nn.Sequential`` ResNet torchvision's keys.
:func:`key_problems` and :func:`guess_backbone` say why a state dict does not fit a backbone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from directclr.backbones import first_conv_key, stem_kernel
from directclr.checkpoint_import.foreign import placeholder_name

WRAPPERS = ("state_dict", "model")
EMA_WRAPPERS = ("state_dict_ema", "model_ema")  # timm's training checkpoints
KEY_PREFIXES = ("module.", "_orig_mod.")
# This project's ResNetBackbone and MLPProjector wrap their layers in ``net``; a backbone is
# compared with a file in torchvision's keys, without it.
NET_PREFIX = "net."
RESNET_CHILDREN = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
SHOWN = 5  # keys listed per kind in an error message

# ---------------------------------------------------------------------------------------------
# Reading the file


def strip_prefixes(key: str) -> str:
    """A key without DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    while key.startswith(KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def wrappers(use_ema: bool = True) -> tuple[str, ...]:
    """The wrapper entries a training checkpoint's weights may sit in, in the order tried."""
    return EMA_WRAPPERS + WRAPPERS if use_ema else WRAPPERS + EMA_WRAPPERS


def unwrap_path(checkpoint: Any, names: tuple[str, ...]) -> tuple[Any, list[str]]:
    """The state dict inside wrapper entries (a training checkpoint's), and their names."""
    path: list[str] = []
    while isinstance(checkpoint, dict) and not is_model_artifact(checkpoint):
        name = next((k for k in names if isinstance(checkpoint.get(k), dict)), None)
        if name is None:
            break
        checkpoint = checkpoint[name]
        path.append(name)
    return checkpoint, path


def unwrap(checkpoint: Any, names: tuple[str, ...] = WRAPPERS) -> Any:
    """The state dict inside ``state_dict`` / ``model`` wrappers (a training checkpoint's), or
    inside the wrappers ``names`` in their order."""
    return unwrap_path(checkpoint, names)[0]


def unreadable_entries(checkpoint: Any, shown: int = 50) -> list[str]:
    """Where the file held pickled objects that were left out unread (placeholders of
    :func:`~directclr.checkpoint_import.foreign.load_with_placeholders`), as
    ``entry.path (module.Class)``."""
    found: list[str] = []

    def visit(value: Any, path: str) -> None:
        name = placeholder_name(value)
        if name is not None:
            found.append(f"{path or 'the whole file'} ({name})")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(item, f"{path}[{index}]")

    visit(checkpoint, "")
    if len(found) > shown:
        found = found[:shown] + [f"... ({len(found) - shown} more)"]
    return found


def flatten_checkpoint(
    checkpoint: Any, names: tuple[str, ...] = WRAPPERS
) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint under one dotted key, with wrappers (``names``, tried in
    order) and DDP / torch.compile prefixes removed; other values (epoch, optimizer settings,
    placeholders of objects left unread) are left out.

    Raises ValueError for anything that holds no tensors.
    """
    flat: dict[str, torch.Tensor] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, dict):
            for name, item in value.items():
                name = strip_prefixes(str(name))
                visit(item, f"{key}.{name}" if key else name)

    inner = unwrap(checkpoint, names)
    if isinstance(inner, dict):
        visit(inner["state_dict"] if is_model_artifact(inner) else inner, "")
    if not flat:
        skipped = unreadable_entries(inner, SHOWN)
        if skipped:
            raise ValueError(
                f"the file holds no tensors that can be read without running its code: "
                f"{', '.join(skipped)} is a pickled Python object (a whole model saved with "
                "torch.save(model) is one), left unread. In the program that wrote it, save "
                "the weights alone (torch.save(model.state_dict(), path)) and use that file"
            )
        keys = list(checkpoint)[:SHOWN] if isinstance(checkpoint, dict) else []
        raise ValueError(
            f"the file is not a checkpoint: it holds no named tensors (a "
            f"{type(checkpoint).__name__}{f' with keys {keys}' if keys else ''}); give a state "
            "dict, a dict of state dicts, or this project's model artifact"
        )
    return flat


def checkpoint_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the keys, dtypes, shapes and bytes of a flattened checkpoint: which weights
    were analysed, whatever the file was called."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key} {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def is_model_artifact(checkpoint: Any) -> bool:
    """True for the dict of :func:`directclr.models.model_artifact`."""
    required = {"config", "in_channels", "state_dict"}
    return isinstance(checkpoint, dict) and required <= checkpoint.keys()


def _entries(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors grouped by the first component of their key ("" for keys with none)."""
    entries: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        head, dot, rest = key.partition(".")
        if dot:
            entries.setdefault(head, {})[rest] = value
        else:
            entries.setdefault("", {})[key] = value
    return entries


# ---------------------------------------------------------------------------------------------
# Checking keys against the architecture


def listing(keys: list[str]) -> str:
    """The first few keys, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def key_problems(given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of a state dict against a model's, the first few
    of each (a missing BatchNorm ``num_batches_tracked`` counter is not a problem)."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k} (file {list(given[k].shape)}, model {list(expected[k].shape)})"
        for k in given
        if k in expected and given[k].shape != expected[k].shape
    ]
    return [
        f"{len(keys)} {label} keys: {listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
        if keys
    ]


def first_conv_in_file(backbone: str) -> str:
    """The key of ``backbone``'s first convolution weight in a file's state dict, whose
    ResNets use torchvision's keys (without this project's ``net.``)."""
    return first_conv_key(backbone).removeprefix(NET_PREFIX)


def guess_backbone(tensors: dict[str, torch.Tensor]) -> tuple[str | None, str] | None:
    """What a backbone state dict looks like, for error messages: the name of the backbone of
    this project it resembles (or None) and a description; None if it resembles nothing."""
    first = tensors.get(first_conv_in_file("small_cnn"))
    if first is not None and first.ndim == 4:
        return "small_cnn", f"small_cnn with width={first.shape[0]}"
    if "layer4.0.conv1.weight" not in tensors:
        return None
    bottleneck = "layer1.0.conv3.weight" in tensors
    blocks = tuple(
        sum(f"layer{i}.{b}.conv1.weight" in tensors for b in range(64)) for i in (1, 2, 3, 4)
    )
    name = {(False, (2, 2, 2, 2)): "resnet18", (True, (3, 4, 6, 3)): "resnet50"}.get(
        (bottleneck, blocks)
    )
    description = name or f"a ResNet with {list(blocks)} blocks per stage"
    stem = tensors.get(first_conv_in_file("resnet50"))  # conv1, as in any torchvision ResNet
    if stem is not None and stem.ndim == 4:
        description += f" with a {stem.shape[-1]}x{stem.shape[-1]} conv1"
        if name and stem.shape[-1] != stem_kernel(name):
            # The other stem of the same ResNet: say which setting reads it.
            imagenet = stem.shape[-1] == stem_kernel(name, "imagenet")
            name += ", " + ("stem=imagenet" if imagenet else "stem=cifar")
    return name, description


# ---------------------------------------------------------------------------------------------
# Taking a checkpoint apart


@dataclass
class Parts:
    """A foreign checkpoint taken apart: the backbone's and projector's state dicts."""

    layout: str
    backbone: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor] | None
    entries: list[str]  # the file's top-level entries, for messages
    unused: list[str]
    dropped: list[str]
    renamed: str | None  # how the backbone's keys were renamed, if they were


def _without_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _without_container(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module's state dict without the name of the one container it wraps its layers in
    (``net.`` of this project's projector, ``layers.`` of lightly's projection heads)."""
    heads = {key.partition(".")[0] for key in state}
    if len(heads) == 1 and all("." in key for key in state) and not next(iter(heads)).isdigit():
        return _without_prefix(state, f"{next(iter(heads))}.")
    return state


def _child_kind(params: dict[str, torch.Tensor]) -> str:
    """What one child of an ``nn.Sequential`` holding a ResNet's children is, from its keys:
    a convolution, a BatchNorm, a stage of residual blocks or a Linear classifier."""
    weight = params.get("weight")
    if weight is not None and set(params) <= {"weight", "bias"}:
        return {4: "conv", 2: "linear"}.get(weight.ndim, "?")
    if {"running_mean", "running_var"} <= set(params) and all("." not in k for k in params):
        return "bn"
    return "stage" if "0.conv1.weight" in params else "?"


def resnet_from_sequential(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], str | None]:
    """A backbone saved as ``nn.Sequential(*list(resnet.children())[:-1])`` (lightly's examples)
    with torchvision's keys, and a sentence saying how its children were named; the state
    unchanged and None when it is not one.

    The children with weights are matched by what they hold, in order: conv1, bn1, four stages
    (layer1 to layer4) and, if the classifier was kept, fc. The parameter-free children (relu,
    maxpool, avgpool) hold no keys, so a Sequential that left out the max-pool reads the same.
    """
    children: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        index, dot, rest = key.partition(".")
        if not (dot and index.isdigit()):
            return state, None
        children.setdefault(int(index), {})[rest] = value
    order = sorted(children)
    kinds = [_child_kind(children[index]) for index in order]
    expected = ["conv", "bn", "stage", "stage", "stage", "stage", "linear"]
    if kinds not in (expected, expected[:-1]):
        return state, None
    renamed = {
        f"{RESNET_CHILDREN[position]}.{rest}": value
        for position, index in enumerate(order)
        for rest, value in children[index].items()
    }
    mapping = ", ".join(f"{index}: {RESNET_CHILDREN[pos]}" for pos, index in enumerate(order))
    return renamed, f"nn.Sequential of a torchvision ResNet's children ({mapping})"


def take_apart(
    tensors: dict[str, torch.Tensor], backbone_entry: str, projector_entry: str | None
) -> Parts:
    """The backbone under ``backbone_entry`` (or, without it, the whole state dict), the
    projector under ``projector_entry``; the classifier ``fc`` and this project's input
    statistics are set aside."""
    entries = _entries(tensors)
    loose = entries.pop("", {})
    names = sorted(entries)
    if backbone_entry in entries:
        layout, backbone = "entries", entries.pop(backbone_entry)
        projector = entries.pop(projector_entry, None) if projector_entry else None
        unused = sorted(entries) + sorted(k for k in loose if k not in ("mean", "std"))
    else:
        layout, projector, unused = "state_dict", None, []
        backbone = {k: v for k, v in tensors.items() if k not in ("mean", "std")}
    backbone, renamed = resnet_from_sequential(backbone)
    dropped = sorted(k for k in backbone if k.startswith("fc."))
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    backbone = _without_prefix(backbone, NET_PREFIX)
    projector = _without_container(projector) if projector is not None else None
    return Parts(layout, backbone, projector, names, unused, dropped, renamed)


def weights_note(checkpoint: Any, path: list[str], settings: str) -> str:
    """Which entry the weights were read from, and the other weights beside it, if any."""
    if not path:
        return "the file's top level"
    where = ".".join(path)
    outer = checkpoint
    for name in path[:-1]:
        outer = outer[name]
    ema = path[-1] in EMA_WRAPPERS
    others = [k for k in (WRAPPERS if ema else EMA_WRAPPERS) if isinstance(outer.get(k), dict)]
    if ema:
        where += " (the EMA weights)"
    if others:
        flip = "false" if ema else "true"
        where += f"; {', '.join(others)} set aside ({settings}use_ema={flip} reads it)"
    return where
