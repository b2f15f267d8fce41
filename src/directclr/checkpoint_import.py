"""Bring your own encoder: turn a pretrained checkpoint into this project's model artifact.

Researchers already have encoders (the paper's released DirectCLR ResNet-50, SimCLR models from
other code, torchvision weights) and want to know how collapsed they are. This module reads the
layouts such checkpoints come in and converts them to the dict of
:func:`directclr.models.model_artifact`, so the embeddings, spectrum and linear_eval stages
measure them unchanged. The layouts:

* ``model_artifact``: this project's own ``{"config", "in_channels", "state_dict"}``, used as
  it is (the file names its architecture);
* ``entries``: the backbone's state dict under an entry (``backbone`` by default) and the
  projector's under another (``projector``), as the paper's released code saves them
  (``dict(backbone=..., head=...)``: a torchvision ResNet-50 whose ``fc`` is the identity, and
  ``head`` its online ImageNet classifier); flat keys ``backbone.…``, as in a training
  checkpoint's model state dict, read the same;
* ``state_dict``: a plain torchvision ResNet (or this project's SmallCNN) state dict; the
  classifier ``fc`` is dropped. timm's ResNets name their weights as torchvision does
  (``conv1``, ``bn1``, ``layer1``-``layer4``, ``fc``) and read the same.

A ResNet backbone may also be an ``nn.Sequential`` of a torchvision ResNet's children without
``fc``, as lightly's examples build it (keys ``0.weight`` for conv1, ``1.*`` for bn1, ``4.*`` to
``7.*`` for layer1 to layer4): it is renamed to torchvision's keys. Any layout may sit inside
``state_dict`` / ``model`` wrappers (a PyTorch Lightning or solo-learn ``.ckpt``, whose
``state_dict`` holds ``backbone.…`` keys) or timm's EMA wrappers ``state_dict_ema`` /
``model_ema`` (preferred unless ``use_ema`` is false), and carry the ``module.`` prefix of
DistributedDataParallel (or ``_orig_mod.`` of ``torch.compile``). The architecture comes from
:class:`EncoderConfig`; a file whose keys or shapes do not fit it is refused, listing missing,
unexpected and mis-shaped keys and the setting to change.

Nothing here reads files: the caller loads the checkpoint with
:func:`directclr.checkpoints.load_foreign_checkpoint` (weights-only torch files, torch files
whose pickled objects such as Lightning's hyper-parameters are replaced by inert
:class:`~directclr.checkpoints.UnreadableObject` placeholders, or ``.safetensors``). The report
lists each placeholder (``unreadable_entries``); the weights never come from one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from directclr.backbones import BACKBONES, Backbone, Norm, Stem, representation_dim
from directclr.checkpoints import placeholder_name
from directclr.models import ModelConfig, artifact_config, build_model, model_artifact

# torchvision's ImageNet statistics, which torchvision-style encoders were trained with.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
WRAPPERS = ("state_dict", "model")
EMA_WRAPPERS = ("state_dict_ema", "model_ema")  # timm's training checkpoints
KEY_PREFIXES = ("module.", "_orig_mod.")
FIRST_CONV = {
    "small_cnn": "features.0.weight",
    "resnet18": "conv1.weight",
    "resnet50": "conv1.weight",
}
STEM_KERNEL = {"resnet18": 3, "resnet50": 7}  # conv1 of this project's ResNets
SHOWN = 5  # keys listed per kind in an error message


class ChannelStats(BaseModel):
    """Per-channel mean and std of the encoder's input, on the [0, 1] scale."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ChannelStats:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        return self


class EncoderConfig(BaseModel):
    """How to read a checkpoint: the architecture, and where its parts sit in the file."""

    model_config = ConfigDict(extra="forbid")

    backbone: Backbone = Field(
        "resnet50",
        description="resnet50: torchvision's (ImageNet stem); resnet18: CIFAR stem (3x3 conv1, "
        "no max-pool); small_cnn: this project's",
    )
    width: int = Field(64, ge=1, description="small_cnn only: first block's channels (r: 8*width)")
    norm: Norm = "batch"
    stem: Stem = Field(
        "auto", description="ResNets: auto (resnet18: CIFAR stem, resnet50: ImageNet), or explicit"
    )
    backbone_entry: str = Field(
        "backbone", min_length=1, description="entry of the file holding the backbone, if any"
    )
    projector_entry: str | None = Field(
        "projector", description="entry holding the projector; null: z = r"
    )
    d0: int | None = Field(
        None, ge=1, description="a DirectCLR encoder: z = r[:, :d0] (the file has no projector)"
    )
    use_ema: bool = Field(
        True,
        description="a training checkpoint with EMA weights (timm's state_dict_ema or "
        "model_ema) beside the trained ones: read the EMA weights (false: the trained ones)",
    )
    normalization: Literal["auto", "imagenet", "dataset"] | ChannelStats = Field(
        "auto",
        description="auto: the file's own statistics if it has them, else ImageNet's for a "
        "3-channel encoder and the dataset card's otherwise",
    )


@dataclass
class ConvertedProjector:
    """A foreign projector as one of this project's methods, with that method's state dict."""

    method: str
    hidden_dim: int | None
    out_dim: int
    state_dict: dict[str, torch.Tensor]
    description: str


# ---------------------------------------------------------------------------------------------
# Reading the file


def _strip(key: str) -> str:
    """A key without DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    while key.startswith(KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def wrappers(use_ema: bool = True) -> tuple[str, ...]:
    """The wrapper entries a training checkpoint's weights may sit in, in the order tried."""
    return EMA_WRAPPERS + WRAPPERS if use_ema else WRAPPERS + EMA_WRAPPERS


def _unwrap_path(checkpoint: Any, names: tuple[str, ...]) -> tuple[Any, list[str]]:
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
    return _unwrap_path(checkpoint, names)[0]


def unreadable_entries(checkpoint: Any, shown: int = 50) -> list[str]:
    """Where the file held pickled objects that were left out unread (placeholders of
    :func:`directclr.checkpoints.load_with_placeholders`), as ``entry.path (module.Class)``."""
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
                name = _strip(str(name))
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


def _listing(keys: list[str]) -> str:
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
        f"{len(keys)} {label} keys: {_listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
        if keys
    ]


def guess_backbone(tensors: dict[str, torch.Tensor]) -> tuple[str | None, str] | None:
    """What a backbone state dict looks like, for error messages: the name of the backbone of
    this project it resembles (or None) and a description; None if it resembles nothing."""
    first = tensors.get("features.0.weight")
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
    stem = tensors.get("conv1.weight")
    if stem is not None and stem.ndim == 4:
        description += f" with a {stem.shape[-1]}x{stem.shape[-1]} conv1"
        if name and stem.shape[-1] != STEM_KERNEL[name]:
            # The other stem of the same ResNet: say which setting reads it.
            name += ", " + ("stem=imagenet" if stem.shape[-1] == 7 else "stem=cifar")
    return name, description


def _backbone_hint(given: dict[str, torch.Tensor], config: EncoderConfig, settings: str) -> str:
    guess = guess_backbone(given)
    if guess is None:
        return ""
    name, description = guess
    if name == "small_cnn":
        width = given["features.0.weight"].shape[0]
        if (name, width) != (config.backbone, config.width):
            change = f"{settings}backbone=small_cnn, {settings}width={width}"
            return f"Hint: the file looks like {description}: set {change}. "
    elif name:
        backbone, _, stem = name.partition(", stem=")
        wanted = f"{settings}backbone={backbone}" + (f", {settings}stem={stem}" if stem else "")
        if (backbone, stem or "auto") != (config.backbone, config.stem):
            return f"Hint: the file looks like {description}: set {wanted}. "
    else:
        return f"Hint: the file looks like {description}. "
    return ""


# ---------------------------------------------------------------------------------------------
# Projectors


def _layers(state: dict[str, torch.Tensor]) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The layers of an ``nn.Sequential`` state dict (or of a lone layer's), by index."""
    if all("." not in key for key in state):
        return [(0, state)]
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or "." in name:
            raise ValueError(f"its keys ({_listing(list(state))}) are not an nn.Sequential's")
        layers.setdefault(int(index), {})[name] = value
    return sorted(layers.items())


def _kind(params: dict[str, torch.Tensor]) -> str:
    if {"running_mean", "running_var"} <= set(params):
        return "B"
    weight = params.get("weight")
    if weight is not None and weight.ndim == 2 and set(params) <= {"weight", "bias"}:
        return "L"
    return "?"


def _batch_norm(params: dict[str, torch.Tensor], bias: torch.Tensor | None) -> dict:
    """A BatchNorm1d's state with the preceding Linear's bias folded in: in eval mode,
    BN(Wx + b) with running mean m is BN(Wx) with running mean m - b."""
    mean = params["running_mean"].float()
    return {
        "weight": params.get("weight", torch.ones_like(mean)).float(),
        "bias": params.get("bias", torch.zeros_like(mean)).float(),
        "running_mean": mean - bias.float() if bias is not None else mean,
        "running_var": params["running_var"].float(),
        "num_batches_tracked": params.get("num_batches_tracked", torch.tensor(0)),
    }


def _pass_through_batch_norm(bias: torch.Tensor | None, dim: int, eps: float = 1e-5) -> dict:
    """A BatchNorm1d that in eval mode adds ``bias`` (or nothing): it stands in for the final
    BN of this project's MLP projector when the foreign MLP has none."""
    return {
        "weight": torch.full((dim,), 1.0 + eps).sqrt(),
        "bias": torch.zeros(dim),
        "running_mean": -bias.float() if bias is not None else torch.zeros(dim),
        "running_var": torch.ones(dim),
        "num_batches_tracked": torch.tensor(0),
    }


def convert_projector(state: dict[str, torch.Tensor], dim: int) -> ConvertedProjector:
    """A projector's state dict as this project's ``simclr`` MLP or ``simclr_linear`` layer,
    for a ``dim``-dimensional representation.

    Understood: one Linear without bias; Linear-BN-ReLU-Linear(-BN) as an ``nn.Sequential``
    (indices i, i+1, i+3[, i+4]: the parameter-free module at i+2 is taken to be the ReLU),
    with or without Linear biases (folded into the next BatchNorm). Sizes come from the weight
    shapes. Anything else raises ValueError saying why.
    """
    layers = _layers(state)
    kinds = "".join(_kind(params) for _, params in layers)
    indices = [index for index, _ in layers]
    first = layers[0][1].get("weight")
    if first is not None and first.ndim == 2 and first.shape[1] != dim:
        raise ValueError(f"its first layer takes {first.shape[1]} inputs and r has {dim}")
    if kinds == "L":
        params = layers[0][1]
        if "bias" in params:
            raise ValueError(
                "it is one Linear with a bias, and this project's linear projector "
                "(simclr_linear) has none"
            )
        out_dim, dim = params["weight"].shape
        return ConvertedProjector(
            "simclr_linear", None, out_dim, {"weight": params["weight"].float()},
            f"Linear {dim}-{out_dim}",
        )  # fmt: skip
    start = indices[0]
    if (
        kinds in ("LBL", "LBLB")
        and indices == [start, start + 1, start + 3, start + 4][: len(kinds)]
    ):
        (_, linear1), (_, norm1), (_, linear2), *final = layers
        hidden, dim = linear1["weight"].shape
        out_dim = linear2["weight"].shape[0]
        if norm1["running_mean"].shape[0] != hidden or linear2["weight"].shape[1] != hidden:
            raise ValueError("its layer sizes do not chain")
        norm2 = (
            _batch_norm(final[0][1], linear2.get("bias"))
            if final
            else _pass_through_batch_norm(linear2.get("bias"), out_dim)
        )
        converted = {
            "net.0.weight": linear1["weight"].float(),
            "net.3.weight": linear2["weight"].float(),
        }
        converted |= {f"net.1.{k}": v for k, v in _batch_norm(norm1, linear1.get("bias")).items()}
        converted |= {f"net.4.{k}": v for k, v in norm2.items()}
        shape = "Linear-BN-ReLU-Linear" + ("-BN" if final else "")
        return ConvertedProjector(
            "simclr", hidden, out_dim, converted, f"{shape} {dim}-{hidden}-{out_dim}"
        )
    raise ValueError(
        f"its layers ({', '.join(f'{i}:{k}' for i, k in zip(indices, kinds, strict=True))}; "
        "L Linear, B BatchNorm) are neither one Linear nor Linear-BN-ReLU-Linear(-BN)"
    )


# ---------------------------------------------------------------------------------------------
# Input normalisation


def _file_stats(tensors: dict[str, torch.Tensor], channels: int) -> ChannelStats | None:
    """A ContrastiveModel's ``mean`` / ``std`` buffers, when the state dict has them."""
    mean, std = tensors.get("mean"), tensors.get("std")
    if mean is None or std is None or mean.numel() != channels or std.numel() != channels:
        return None
    return ChannelStats(mean=mean.flatten().tolist(), std=std.flatten().tolist())


def resolve_normalization(
    setting: str | ChannelStats,
    in_channels: int,
    file_stats: ChannelStats | None,
    settings: str = "",
) -> tuple[str, ChannelStats | None]:
    """Where the input normalisation comes from (``file``, ``imagenet``, ``parameters`` or
    ``dataset``) and its statistics (None for ``dataset``: they come with the dataset card)."""
    if isinstance(setting, ChannelStats):
        if len(setting.mean) != in_channels:
            raise ValueError(
                f"{settings}normalization has {len(setting.mean)} channels and the encoder takes "
                f"{in_channels}; give {in_channels} values of mean and std"
            )
        return "parameters", setting
    if setting == "auto":
        if file_stats is not None:
            return "file", file_stats
        setting = "imagenet" if in_channels == 3 else "dataset"
    if setting == "imagenet":
        if in_channels != 3:
            raise ValueError(
                f"{settings}normalization=imagenet needs a 3-channel encoder and this one takes "
                f"{in_channels}; use dataset, or give mean and std"
            )
        return "imagenet", ChannelStats(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return "dataset", None


def _set_stats(state: dict[str, torch.Tensor], stats: ChannelStats) -> None:
    state["mean"] = torch.tensor(stats.mean, dtype=torch.float32).view(1, -1, 1, 1)
    state["std"] = torch.tensor(stats.std, dtype=torch.float32).view(1, -1, 1, 1)


def _normalization(source: str, stats: ChannelStats | None) -> dict:
    return {"normalization": {"source": source} | (stats.model_dump() if stats else {})}


# ---------------------------------------------------------------------------------------------
# Conversion

IGNORED_FOR_ARTIFACTS = [
    "backbone", "width", "norm", "backbone_entry", "projector_entry", "d0", "use_ema",
]  # fmt: skip


def _import_artifact(artifact: dict, config: EncoderConfig, settings: str) -> tuple[dict, dict]:
    """This project's own model artifact, checked, with the normalisation the settings ask for."""
    try:
        model_config = artifact_config(artifact)
        in_channels = int(artifact["in_channels"])
    except (ValidationError, TypeError, ValueError) as err:
        raise ValueError(
            f"the file looks like this project's model artifact but its config is invalid "
            f"({err}); it may come from another version of directclr"
        ) from None
    model = build_model(model_config, in_channels, [0.0] * in_channels, [1.0] * in_channels)
    state = {_strip(k): v for k, v in artifact["state_dict"].items()}
    expected = model.state_dict()
    problems = key_problems(state, expected)
    if problems:
        raise ValueError(
            f"the model artifact's state dict does not fit its own config (backbone "
            f"{model_config.backbone}, method {model_config.method}): {'; '.join(problems)}; it "
            "may come from another version of directclr"
        )
    source, stats = resolve_normalization(
        config.normalization, in_channels, _file_stats(state, in_channels), settings
    )
    if stats is not None:
        _set_stats(state, stats)
    model.load_state_dict({k: state.get(k, v) for k, v in expected.items()})
    report = {
        "layout": "model_artifact",
        "embedding": f"as trained: this project's {model_config.method} model",
        "projector": model_config.method,
        "ignored_settings": IGNORED_FOR_ARTIFACTS,
        "dropped_keys": [],
        "unused_entries": [],
    }
    return model_artifact(model, model_config, in_channels), report | _normalization(source, stats)


@dataclass
class _Parts:
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


RESNET_CHILDREN = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")


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


def _take_apart(tensors: dict[str, torch.Tensor], config: EncoderConfig) -> _Parts:
    """The backbone under ``backbone_entry`` (or, without it, the whole state dict), the
    projector under ``projector_entry``; the classifier ``fc`` and this project's input
    statistics are set aside."""
    entries = _entries(tensors)
    loose = entries.pop("", {})
    names = sorted(entries)
    if config.backbone_entry in entries:
        layout, backbone = "entries", entries.pop(config.backbone_entry)
        projector = entries.pop(config.projector_entry, None) if config.projector_entry else None
        unused = sorted(entries) + sorted(k for k in loose if k not in ("mean", "std"))
    else:
        layout, projector, unused = "state_dict", None, []
        backbone = {k: v for k, v in tensors.items() if k not in ("mean", "std")}
    backbone, renamed = resnet_from_sequential(backbone)
    dropped = sorted(k for k in backbone if k.startswith("fc."))
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    # This project's ResNetBackbone and MLPProjector wrap their layers in `net`.
    backbone = _without_prefix(backbone, "net.")
    projector = _without_container(projector) if projector is not None else None
    return _Parts(layout, backbone, projector, names, unused, dropped, renamed)


def _embedding(
    projector_state: dict[str, torch.Tensor] | None,
    config: EncoderConfig,
    dim: int,
    settings: str,
    unused: Sequence[str] = (),
) -> tuple[ConvertedProjector | None, str]:
    """The projector to use (None: z = r or r[:, :d0]) and a sentence saying how z is made
    (naming the file's ``unused`` entries when the projector entry is missing)."""
    entry = config.projector_entry
    projector = None
    if projector_state is not None:
        try:
            projector = convert_projector(projector_state, dim)
        except ValueError as err:
            note = f"z = r: the '{entry}' entry was not used, {err}"
        else:
            note = f"z = projector(r): {projector.description}, from the '{entry}' entry"
    elif entry:
        note = f"z = r: the file has no '{entry}' entry"
        if unused:
            note += (
                f" (its other entries: {_listing(list(unused))}; {settings}projector_entry "
                "names the projector's, e.g. projection_head for lightly)"
            )
    else:
        note = f"z = r: {settings}projector_entry is null"
    if config.d0 is None:
        return projector, note
    if projector is not None:
        raise ValueError(
            f"{settings}d0={config.d0} asks for z = r[:, :d0], and the file has a projector under "
            f"'{entry}': set {settings}projector_entry=null to use r[:, :d0], or leave d0 unset "
            "to use the projector"
        )
    return None, f"z = r[:, :{config.d0}] ({settings}d0)"


def _model_config(
    projector: ConvertedProjector | None, config: EncoderConfig, settings: str
) -> ModelConfig:
    """The architecture of the imported model, in this project's words."""
    settings_of_projector = {}
    if projector is not None:
        settings_of_projector["projector_dim"] = projector.out_dim
        if projector.hidden_dim is not None:
            settings_of_projector["projector_hidden_dim"] = projector.hidden_dim
    if config.d0 is not None:
        settings_of_projector["d0"] = config.d0
    method = projector.method if projector else "directclr" if config.d0 else "no_projector"
    try:
        return ModelConfig(
            method=method, backbone=config.backbone, width=config.width, norm=config.norm,
            stem=config.stem, **settings_of_projector,
        )  # fmt: skip
    except ValidationError as err:
        raise ValueError(f"{settings}d0: {err.errors()[0]['msg']}") from None


def _fit_message(parts: _Parts, problems: list[str], config: EncoderConfig, settings: str) -> str:
    what = f"the '{config.backbone_entry}' entry" if parts.layout == "entries" else "the state dict"
    width = f" (width={config.width})" if config.backbone == "small_cnn" else ""
    hint = _backbone_hint(parts.backbone, config, settings)
    return (
        f"{what} of the checkpoint does not fit backbone={config.backbone}{width}, "
        f"norm={config.norm}, stem={config.stem}: {'; '.join(problems)}. {hint}"
        f"Change {settings}backbone ({', '.join(BACKBONES)}), {settings}width (small_cnn), "
        f"{settings}stem (ResNets: auto, cifar, imagenet) or {settings}norm (batch, group); "
        f"or {settings}backbone_entry if the backbone sits under "
        f"another entry of the file (entries: {_listing(parts.entries) or 'none'})"
    )


def _weights_note(checkpoint: Any, path: list[str], settings: str) -> str:
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


def convert_checkpoint(
    checkpoint: Any, config: EncoderConfig, settings: str = ""
) -> tuple[dict, dict]:
    """A loaded checkpoint as this project's model artifact, and a report of what was read.

    Raises ValueError for a file that is not a checkpoint, or whose keys or shapes do not fit
    ``config``, naming the setting to change (``settings`` prefixes the names, e.g.
    ``analyze.encoder.``). With ``normalization: dataset`` the artifact's mean and std are
    placeholders until :func:`fit_to_dataset` sets them.
    """
    names = wrappers(config.use_ema)
    tensors = flatten_checkpoint(checkpoint, names)
    inner, path = _unwrap_path(checkpoint, names)
    digest = {
        "checkpoint_hash": checkpoint_hash(tensors),
        "weights": _weights_note(checkpoint, path, settings),
        "unreadable_entries": unreadable_entries(checkpoint),
    }
    if is_model_artifact(inner):
        artifact, report = _import_artifact(inner, config, settings)
        return artifact, digest | report

    parts = _take_apart(tensors, config)
    conv = parts.backbone.get(FIRST_CONV[config.backbone])
    in_channels = int(conv.shape[1]) if conv is not None and conv.ndim == 4 else 3
    dim = representation_dim(config.backbone, config.width)
    unused = parts.unused if parts.layout == "entries" else []
    projector, note = _embedding(parts.projector, config, dim, settings, unused)
    model_config = _model_config(projector, config, settings)
    file_stats = _file_stats({k: v for k, v in tensors.items() if "." not in k}, in_channels)
    source, stats = resolve_normalization(config.normalization, in_channels, file_stats, settings)

    model = build_model(model_config, in_channels, [0.0] * in_channels, [1.0] * in_channels)
    prefix = "backbone.net." if hasattr(model.backbone, "net") else "backbone."
    state = model.state_dict()
    expected = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    problems = key_problems(parts.backbone, expected)
    if problems:
        raise ValueError(_fit_message(parts, problems, config, settings))
    state |= {prefix + k: v for k, v in parts.backbone.items()}
    if projector is not None:
        state |= {f"projector.{k}": v for k, v in projector.state_dict.items()}
    if stats is not None:
        _set_stats(state, stats)
    model.load_state_dict(state)
    report = digest | {
        "layout": parts.layout,
        "renamed_keys": parts.renamed,
        "embedding": note,
        "projector": projector.description if projector else None,
        "dropped_keys": parts.dropped,
        "unused_entries": parts.unused,
    }
    return model_artifact(model, model_config, in_channels), report | _normalization(source, stats)


def fit_to_dataset(artifact: dict, report: dict, dataset_card: dict) -> tuple[dict, dict]:
    """The artifact checked against the dataset it will encode (its channels), with the dataset
    card's statistics as its normalisation when the report says they are wanted."""
    channels, encoder_channels = int(dataset_card["channels"]), int(artifact["in_channels"])
    if channels != encoder_channels:
        raise ValueError(
            f"the encoder takes {encoder_channels}-channel images and the dataset has {channels}: "
            f"set data_prep.channels={encoder_channels}"
            + (" (grey images are repeated into RGB)" if encoder_channels == 3 else "")
        )
    config = artifact["config"]
    report = report | {
        "backbone": config["backbone"],
        "method": config["method"],
        "in_channels": encoder_channels,
        "representation_dim": representation_dim(config["backbone"], config["width"]),
        "image_shape": dataset_card.get("image_shape"),
    }
    if report["normalization"]["source"] == "dataset":
        stats = ChannelStats(mean=dataset_card["channel_mean"], std=dataset_card["channel_std"])
        artifact = artifact | {"state_dict": dict(artifact["state_dict"])}
        _set_stats(artifact["state_dict"], stats)
        report |= _normalization("dataset", stats)
    return artifact, report
