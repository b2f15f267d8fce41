"""A foreign encoder checkpoint as this project's model artifact, and the settings to read it.

:class:`EncoderConfig` names the architecture (the settings of
:class:`~directclr.models.ModelConfig` of the same names) and where the parts sit in the file.
:func:`convert_checkpoint` takes a loaded checkpoint apart (:mod:`.layouts`), checks the backbone
against the architecture, converts the projector (:mod:`.projector`), chooses the input
normalisation and builds the model; :func:`fit_to_dataset` checks it against the dataset it will
encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from directclr.backbones import BACKBONES, Backbone, Norm, Stem, representation_dim
from directclr.checkpoint_import.layouts import (
    NET_PREFIX,
    Parts,
    checkpoint_hash,
    first_conv_in_file,
    flatten_checkpoint,
    guess_backbone,
    is_model_artifact,
    key_problems,
    listing,
    strip_prefixes,
    take_apart,
    unreadable_entries,
    unwrap_path,
    weights_note,
    wrappers,
)
from directclr.checkpoint_import.projector import ConvertedProjector, convert_projector
from directclr.models import ModelConfig, artifact_config, build_model, model_artifact

# torchvision's ImageNet statistics, which torchvision-style encoders were trained with.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The architecture settings an imported encoder shares with a trained model: declared once, by
# ModelConfig (type, bounds, default, description).
_ARCHITECTURE = ModelConfig.model_fields


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

    # The one architecture default of its own: the encoders people bring are most often the
    # paper's ImageNet ResNet-50, while a model trained here starts from small_cnn.
    backbone: Backbone = Field(
        "resnet50",
        description="resnet50: torchvision's (ImageNet stem); resnet18: CIFAR stem (3x3 conv1, "
        "no max-pool); small_cnn: this project's",
    )
    width: int = _ARCHITECTURE["width"]
    norm: Norm = _ARCHITECTURE["norm"]
    stem: Stem = _ARCHITECTURE["stem"]
    backbone_entry: str = Field(
        "backbone", min_length=1, description="entry of the file holding the backbone, if any"
    )
    projector_entry: str | None = Field(
        "projector", description="entry holding the projector; null: z = r"
    )
    # ModelConfig's bounds and default; unset means something else here: a trained directclr
    # model's d0 defaults to 64, an imported encoder without d0 is not read as a DirectCLR one.
    d0: Annotated[int | None, _ARCHITECTURE["d0"]] = Field(
        description="a DirectCLR encoder: z = r[:, :d0] (the file has no projector)"
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

# A model artifact names its own architecture and parts: of the settings, only the
# normalisation applies to it; every other one is reported as ignored.
IGNORED_FOR_ARTIFACTS = [name for name in EncoderConfig.model_fields if name != "normalization"]


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
    state = {strip_prefixes(k): v for k, v in artifact["state_dict"].items()}
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


def _backbone_hint(given: dict[str, torch.Tensor], config: EncoderConfig, settings: str) -> str:
    """A sentence naming the settings that would read ``given``, when it resembles a backbone
    of this project other than the configured one."""
    guess = guess_backbone(given)
    if guess is None:
        return ""
    name, description = guess
    if name == "small_cnn":
        width = given[first_conv_in_file("small_cnn")].shape[0]
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
                f" (its other entries: {listing(list(unused))}; {settings}projector_entry "
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


def _fit_message(parts: Parts, problems: list[str], config: EncoderConfig, settings: str) -> str:
    what = f"the '{config.backbone_entry}' entry" if parts.layout == "entries" else "the state dict"
    width = f" (width={config.width})" if config.backbone == "small_cnn" else ""
    hint = _backbone_hint(parts.backbone, config, settings)
    return (
        f"{what} of the checkpoint does not fit backbone={config.backbone}{width}, "
        f"norm={config.norm}, stem={config.stem}: {'; '.join(problems)}. {hint}"
        f"Change {settings}backbone ({', '.join(BACKBONES)}), {settings}width (small_cnn), "
        f"{settings}stem (ResNets: auto, cifar, imagenet) or {settings}norm (batch, group); "
        f"or {settings}backbone_entry if the backbone sits under "
        f"another entry of the file (entries: {listing(parts.entries) or 'none'})"
    )


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
    inner, path = unwrap_path(checkpoint, names)
    digest = {
        "checkpoint_hash": checkpoint_hash(tensors),
        "weights": weights_note(checkpoint, path, settings),
        "unreadable_entries": unreadable_entries(checkpoint),
    }
    if is_model_artifact(inner):
        artifact, report = _import_artifact(inner, config, settings)
        return artifact, digest | report

    parts = take_apart(tensors, config.backbone_entry, config.projector_entry)
    conv = parts.backbone.get(first_conv_in_file(config.backbone))
    in_channels = int(conv.shape[1]) if conv is not None and conv.ndim == 4 else 3
    dim = representation_dim(config.backbone, config.width)
    unused = parts.unused if parts.layout == "entries" else []
    projector, note = _embedding(parts.projector, config, dim, settings, unused)
    model_config = _model_config(projector, config, settings)
    file_stats = _file_stats({k: v for k, v in tensors.items() if "." not in k}, in_channels)
    source, stats = resolve_normalization(config.normalization, in_channels, file_stats, settings)

    model = build_model(model_config, in_channels, [0.0] * in_channels, [1.0] * in_channels)
    prefix = f"backbone.{NET_PREFIX}" if hasattr(model.backbone, "net") else "backbone."
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


# ---------------------------------------------------------------------------------------------
# The import report, read out

SMALLEST_IMAGENET_INPUT = 32  # resnet50's ImageNet stem and stages downsample 32x


def small_images_warning(report: dict) -> str | None:
    """A warning when the dataset's images are too small for the imported encoder (a
    resnet50 whose last feature maps would be 1x1); None when they fit."""
    side = min(report["image_shape"][1:])
    if report["backbone"] != "resnet50" or side >= SMALLEST_IMAGENET_INPUT:
        return None
    return (
        f"import_encoder: resnet50 downsamples 32x and the images are {side:d} px; its last "
        "feature maps are 1x1. Set data_prep.image_size (e.g. 224) for images like its "
        "training data"
    )


def import_summary(report: dict) -> str:
    """One line of what an import (:func:`convert_checkpoint`, then :func:`fit_to_dataset`)
    made of the file: its layout, the model, the embedding, what was set aside (dropped or
    unused entries, renamed keys, weights from inside the file, entries left unread) and the
    normalisation."""
    set_aside = [f"dropped {', '.join(report['dropped_keys'])}"] if report["dropped_keys"] else []
    if report["unused_entries"]:
        set_aside.append(f"unused entries {', '.join(report['unused_entries'])}")
    if report.get("renamed_keys"):
        set_aside.append(f"backbone read as {report['renamed_keys']}")
    if report["weights"] != "the file's top level":
        set_aside.append(f"weights from {report['weights']}")
    if report["unreadable_entries"]:
        # Pickled objects (hyper-parameters and the like) that were not rebuilt: nothing of
        # them is used, and they were never run.
        set_aside.append(f"left unread: {', '.join(report['unreadable_entries'])}")
    return (
        f"import_encoder: {report['layout']} checkpoint -> model ({report['backbone']}, r "
        f"{report['representation_dim']:d}-d, {report['in_channels']:d} channels; "
        f"{'; '.join([report['embedding'], *set_aside])}; normalisation "
        f"{report['normalization']['source']})"
    )
