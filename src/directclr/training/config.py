"""A pretraining run's settings: every knob in one validated object, and the run's name.

:class:`PretrainingConfig` is the one place each setting and its default is written (the
YAML in ``conf/base/parameters_pretraining.yml`` documents the same values, and a test holds
the two together). A setting that changes how a run is *executed* but not what it computes
(the device, how often it checkpoints, ...) is marked on its field with
:func:`execution_setting`; :func:`run_key` leaves the marked settings out, so a checkpoint
still resumes under other values of them. A setting added after runs were already keyed is
marked with :func:`added_setting`: left out of the key while at its default (which computes
what runs made before it computed), so their checkpoints still resume; any other value
names another run.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator

from directclr.augment import TwoViewAugmentation
from directclr.devices import DeviceSetting, WorkersSetting
from directclr.errors import UserFacingError
from directclr.models import ModelConfig

_EXECUTION = "execution_only"
_ADDED = "keyed_unless_default"


def execution_setting(default: Any, **kwargs: Any) -> Any:
    """A field that changes how a run is executed, not what it computes: left out of the
    run's key (:func:`run_key`), so a checkpoint made under another value still resumes."""
    return Field(default, json_schema_extra={_EXECUTION: True}, **kwargs)


def added_setting(default: Any, **kwargs: Any) -> Any:
    """A field added after runs were already keyed, whose ``default`` computes what those
    runs computed: left out of the run's key (:func:`run_key`) while it equals ``default``,
    so their checkpoints still resume; any other value is in the key."""
    return Field(default, json_schema_extra={_ADDED: True}, **kwargs)


class PretrainingConfig(ModelConfig):
    """Every knob of a pretraining run, validated before any compute."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=2)
    optimizer: Literal["lars", "sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, ge=0)
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="scale lr with batch size: lr*B/256 (linear) or lr*sqrt(B/256)"
    )
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: int = Field(2, ge=0)
    final_lr_ratio: float = added_setting(
        0.0,
        ge=0,
        le=1,
        description="the cosine decays from lr to final_lr_ratio * lr (the paper's code: "
        "0.001); 0 decays to zero",
    )
    temperature: float = Field(0.1, gt=0)
    loss: Literal["paper", "ntxent"] = Field(
        "paper",
        description="paper: InfoNCE with the N-1 other-view negatives, both directions "
        "averaged (the paper's code); ntxent: SimCLR's, with all 2N-2 others",
    )
    seed: int = 0
    device: DeviceSetting = execution_setting("auto")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA GPUs that support it, and on CPUs with native "
        "bf16 (avx512_bf16, AMX) for images of 16 px a side or more; else fp32. The loss, "
        "online probe and spectrum are float32 either way",
    )
    augmentation: TwoViewAugmentation = TwoViewAugmentation()
    probe_lr: float = Field(1e-2, gt=0, description="learning rate of the online linear probe")
    rank_every: int = Field(1, ge=1, description="epochs between spectrum/effective-rank records")
    lidar_samples: int = Field(
        64,
        ge=0,
        description="LiDAR at each rank record: the first this many images of the probe batch "
        "are its classes (at most this minus one; below 2: no LiDAR, NaN columns)",
    )
    lidar_views: int = Field(
        4, ge=2, description="augmented views (view1's recipe) of each LiDAR image"
    )
    checkpoint_every: int = execution_setting(1, ge=1, description="epochs between checkpoints")
    resume: bool = execution_setting(
        True, description="continue from this run's checkpoint if there is one"
    )
    progress_every: int = execution_setting(
        20, ge=1, description="steps between progress-bar updates"
    )
    num_workers: WorkersSetting = execution_setting("auto")
    devices: int = execution_setting(
        1, ge=1, description="processes to train on (one per GPU; gloo on CPU); torchrun overrides"
    )
    dist_timeout_s: float = execution_setting(
        600, gt=0, description="a stuck collective fails after this"
    )

    @model_validator(mode="after")
    def _check_run(self) -> PretrainingConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} is longer than the run (epochs="
                f"{self.epochs}): the learning rate would never reach lr; set warmup_epochs "
                f"to at most epochs"
            )
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch_size={self.batch_size} must split evenly over devices={self.devices}"
            )
        uses_cuda = self.device.startswith("cuda") or (
            self.device == "auto" and torch.cuda.is_available()
        )
        if self.devices > 1 and uses_cuda and self.devices > torch.cuda.device_count():
            raise ValueError(
                f"devices={self.devices} asked for, but {torch.cuda.device_count()} GPUs are "
                f"present; lower devices"
            )
        return self


def _marked(field: Any, mark: str) -> bool:
    """Whether a pydantic field carries ``mark`` (:func:`execution_setting`,
    :func:`added_setting`)."""
    return isinstance(field.json_schema_extra, dict) and bool(field.json_schema_extra.get(mark))


def execution_settings(config_class: type[PretrainingConfig] = PretrainingConfig) -> set[str]:
    """The names of the fields marked with :func:`execution_setting`."""
    return {name for name, field in config_class.model_fields.items() if _marked(field, _EXECUTION)}


def _left_out_of_key(settings: BaseModel) -> dict[str, Any]:
    """What :func:`run_key` leaves out of ``settings`` (pydantic's ``exclude``): the fields
    marked :func:`execution_setting`, those marked :func:`added_setting` while at their
    default, and the same inside nested settings."""
    left_out: dict[str, Any] = {}
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if _marked(field, _EXECUTION) or (_marked(field, _ADDED) and value == field.default):
            left_out[name] = True
        elif isinstance(value, BaseModel) and (nested := _left_out_of_key(value)):
            left_out[name] = nested
    return left_out


class SettingsError(UserFacingError, ValueError):
    """A run's settings are invalid; the message names each bad setting as the user wrote it."""


def merge_settings(recipe: dict, overrides: dict | None) -> dict:
    """``recipe`` with ``overrides`` laid over it, nested dicts merged key by key."""
    merged = dict(recipe)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_in(settings: dict | None, path: tuple) -> bool:
    """Whether ``settings`` set the value at ``path``, or a whole value (a list, say) that
    contains it."""
    if not isinstance(settings, dict):
        return False
    value: Any = settings
    for part in path:
        if not isinstance(value, dict):
            return True  # the run set the whole list (or value) this path points into
        if part not in value:
            return False
        value = value[part]
    return True


def run_settings(recipe: dict, overrides: dict | None, run: str = "") -> PretrainingConfig:
    """A run's settings: the shared ``pretraining`` recipe with the run's own changes
    (``<run>.pretraining``) laid over it, merged and validated here, once.

    A bad value is reported under the name the user set it by: ``<run>.pretraining.lr`` if
    the run sets it, ``pretraining.lr`` if it comes from the shared recipe.
    """
    try:
        return PretrainingConfig.model_validate(merge_settings(recipe, overrides))
    except ValidationError as err:
        problems = [_problem(error, overrides, run) for error in err.errors()]
        where = f" of run {run!r}" if run else ""
        raise SettingsError(f"invalid pretraining settings{where}: {'; '.join(problems)}") from None


def validated_settings(settings: Any, node: str) -> PretrainingConfig:
    """``settings`` as a node that trains or builds a run's model receives them: already
    merged and validated (:func:`run_settings`, which the project's hook calls before any
    node runs). Anything else means the node was run without those hooks."""
    if not isinstance(settings, PretrainingConfig):
        raise TypeError(
            f"{node} needs the run's validated settings; run it through the project's "
            "hooks (kedro run, or a KedroSession of this project)"
        )
    return settings


def _problem(error: dict, overrides: dict | None, run: str) -> str:
    """One validation error, naming the setting as the user set it."""
    path = tuple(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if path:
        owner = f"{run}.pretraining" if run and _set_in(overrides, path) else "pretraining"
        return f"{owner}.{'.'.join(path)}: {message}"
    # A rule across settings: name each setting it mentions as the user set it.
    named = [
        f"{run}.pretraining.{name}" if run and _set_in(overrides, (name,))
        else f"pretraining.{name}"
        for name in dict.fromkeys(re.findall(r"\b([a-z_0-9]+)=", message))
        if name in PretrainingConfig.model_fields
    ]  # fmt: skip
    names = f" (set as {', '.join(named)})" if named else ""
    return f"{run or 'the run'}: {message}{names}"


def run_key(
    config: PretrainingConfig,
    data_fingerprint: str,
    world: int = 1,
    device_type: str = "cpu",
    bf16: bool = False,
) -> str:
    """A name for a run: a hash of its settings (less the execution-only ones, and the added
    ones while at their defaults), its data, the number of processes (each process draws its
    own augmentations), the type of device it computes on (the numerics are the device's: a
    CUDA run does not continue a CPU checkpoint) and whether it computes in bf16 autocast
    (what ``precision`` resolved to on that device,
    :func:`~directclr.devices.resolve_precision`)."""
    h = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude=_left_out_of_key(config))
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(data_fingerprint.encode())
    h.update(f"world={world}".encode())
    h.update(f"device={device_type},bf16={bool(bf16)}".encode())
    return f"{config.method}-{h.hexdigest()[:16]}"
