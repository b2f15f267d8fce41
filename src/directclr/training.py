"""Contrastive pretraining: one loop for every method, readable top to bottom.

Each step: draw a batch of uint8 images (already on the training device), make two
augmented views of the whole batch at once, compute (r, z) for both, apply InfoNCE to z,
and train an online linear probe on the detached r. The probe sees labels; the backbone
never does. Every ``checkpoint_every`` epochs the whole training state is checkpointed, so a
killed run started again with the same settings resumes where it stopped and, on CPU,
ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from directclr.analysis import Spectrum, embedding_spectrum, lidar, spectrum_metrics
from directclr.augment import TwoViewAugmentation, ViewAugmentation, augment
from directclr.batches import BatchSource, TensorBatches, source_from_spec
from directclr.checkpoints import CheckpointStore
from directclr.devices import DeviceSetting, WorkersSetting, resolve_device, resolve_precision
from directclr.distributed import (
    all_gather_objects,
    all_max,
    all_sum,
    barrier,
    convert_batchnorm,
    gather_with_grad,
    init_from_environment,
    launched_world_size,
    rank_and_world,
    spawn,
)
from directclr.losses import info_nce, paper_info_nce
from directclr.models import ContrastiveModel, ModelConfig, build_model
from directclr.optim import build_optimizer, learning_rate, scaled_lr

logger = logging.getLogger(__name__)

# Settings that change how a run is executed, not what it computes: a checkpoint made under
# other values of these still resumes.
EXECUTION_SETTINGS = {
    "device", "checkpoint_every", "resume", "progress_every", "num_workers", "devices",
    "dist_timeout_s",
}  # fmt: skip


class PretrainingConfig(ModelConfig):
    """Every knob of a pretraining run, validated before any compute."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    optimizer: Literal["lars", "sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, ge=0)
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="scale lr with batch size: lr*B/256 (linear) or lr*sqrt(B/256)"
    )
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: int = Field(2, ge=0)
    temperature: float = Field(0.1, gt=0)
    loss: Literal["paper", "ntxent"] = Field(
        "paper",
        description="paper: InfoNCE with the N-1 other-view negatives, both directions "
        "averaged (the paper's code); ntxent: SimCLR's, with all 2N-2 others",
    )
    seed: int = 0
    device: DeviceSetting = "auto"
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
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    resume: bool = Field(True, description="continue from this run's checkpoint if there is one")
    progress_every: int = Field(20, ge=1, description="steps between progress-bar updates")
    num_workers: WorkersSetting = "auto"
    devices: int = Field(
        1, ge=1, description="processes to train on (one per GPU; gloo on CPU); torchrun overrides"
    )
    dist_timeout_s: float = Field(600, gt=0, description="a stuck collective fails after this")

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


class SettingsError(ValueError):
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
        problems = []
        for error in err.errors():
            path = tuple(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if not path:
                # A rule across settings: name each setting it mentions as the user set it.
                named = [
                    f"{run}.pretraining.{name}" if run and _set_in(overrides, (name,))
                    else f"pretraining.{name}"
                    for name in dict.fromkeys(re.findall(r"\b([a-z_0-9]+)=", message))
                    if name in PretrainingConfig.model_fields
                ]  # fmt: skip
                names = f" (set as {', '.join(named)})" if named else ""
                problems.append(f"{run or 'the run'}: {message}{names}")
                continue
            owner = f"{run}.pretraining" if run and _set_in(overrides, path) else "pretraining"
            problems.append(f"{owner}.{'.'.join(path)}: {message}")
        where = f" of run {run!r}" if run else ""
        raise SettingsError(f"invalid pretraining settings{where}: {'; '.join(problems)}") from None


def run_key(
    config: PretrainingConfig,
    data_fingerprint: str,
    world: int = 1,
    device_type: str = "cpu",
    bf16: bool = False,
) -> str:
    """A name for a run: a hash of its settings (less execution-only ones), its data, the
    number of processes (each process draws its own augmentations), the type of device it
    computes on (the numerics are the device's: a CUDA run does not continue a CPU
    checkpoint) and whether it computes in bf16 autocast (what
    ``precision`` resolved to on that device, :func:`~directclr.devices.use_bf16`)."""
    h = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude=EXECUTION_SETTINGS)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(data_fingerprint.encode())
    h.update(f"world={world}".encode())
    h.update(f"device={device_type},bf16={bool(bf16)}".encode())
    return f"{config.method}-{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# Checks that stop a run producing garbage


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite_state(model: nn.Module, probe: nn.Module, step: int, lr: float) -> None:
    """Stop the run if any parameter or buffer (BatchNorm's running statistics included) is
    no longer finite: such a model maps every image to the same or to no representation."""
    for prefix, module in (("model", model), ("online probe", probe)):
        bad = first_non_finite(module.state_dict())
        if bad is not None:
            raise FloatingPointError(
                f"{prefix} tensor {bad} became non-finite by step {step} (lr {lr:.3g}); the last "
                f"checkpoint is kept and this state is not saved. Lower lr, use adamw or lars, "
                f"or set precision=fp32, then run again"
            )


def check_not_constant(r: torch.Tensor, step: int, lr: float) -> None:
    """Stop the run if the representation of the fixed probe batch no longer varies: its total
    variance below 1e-8 of its mean squared norm (or not finite) is a model that has collapsed
    to a constant, whatever its loss says."""
    r = r.double()
    variance = float(r.var(0, unbiased=False).sum())
    squared_norm = float((r * r).sum(1).mean())
    if not math.isfinite(variance) or variance <= 1e-8 * squared_norm:
        raise FloatingPointError(
            f"the representation collapsed to a constant by step {step} (lr {lr:.3g}): its "
            f"variance over the probe batch is {variance:.3g} against a mean squared norm of "
            f"{squared_norm:.3g}; the last checkpoint is kept and this state is not saved. "
            f"Lower lr or raise temperature, then run again"
        )


# ---------------------------------------------------------------------------------------------
# The training state and its checkpoint


@dataclass
class TrainingState:
    """Everything training changes and a checkpoint keeps. :meth:`checkpoint` and
    :meth:`restore` are the one pair that writes and reads it."""

    model: ContrastiveModel
    probe: nn.Linear
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer
    source: BatchSource
    augment_rng: torch.Generator
    history: list[dict] = field(default_factory=list)
    spectra: list[dict] = field(default_factory=list)
    epoch: int = 0

    @property
    def projector_rng(self) -> torch.Generator | None:
        return getattr(self.model.projector, "generator", None)

    def checkpoint(self, key: str, augment_states: list[torch.Tensor]) -> dict[str, Any]:
        """A weights-only dict of the state; ``augment_states`` holds every process's
        augmentation generator, in rank order."""
        projector_rng = self.projector_rng
        return {
            "key": key,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "probe": self.probe.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "probe_optimizer": self.probe_optimizer.state_dict(),
            "source": self.source.state(),
            "augment_rng": augment_states,
            "projector_rng": projector_rng.get_state() if projector_rng else None,
            "history": self.history,
            "spectra": self.spectra,
        }

    def restore(self, state: dict[str, Any], rank: int, where: str) -> None:
        """Continue from :meth:`checkpoint`'s dict, after checking that it is finite: a
        checkpoint holding NaN or infinity (``where`` names it) is never reused."""
        bad = first_non_finite(state["model"]) or first_non_finite(state["probe"])
        if bad is not None:
            raise FloatingPointError(
                f"the checkpoint {where} holds non-finite values ({bad}, saved after epoch "
                f"{state['epoch']}) and is not reused; delete it, or set resume=false to train "
                f"this run afresh"
            )
        self.model.load_state_dict(state["model"])
        self.probe.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        self.source.set_state(state["source"])
        self.augment_rng.set_state(state["augment_rng"][rank])
        if self.projector_rng is not None:
            self.projector_rng.set_state(state["projector_rng"])
        self.history, self.spectra, self.epoch = state["history"], state["spectra"], state["epoch"]


# The label-free measures the history records every rank_every epochs, for r and for z.
RANK_METRICS = ("effective_rank", "rankme", "nesum", "participation_ratio", "normalised_std")
# Beside them: LiDAR of r and z on augmented views of a few probe images (lidar_metrics).
LIDAR_COLUMNS = ("lidar_r", "lidar_z")


def rank_metrics(spectrum: Spectrum, kind: str) -> dict[str, float]:
    """:data:`RANK_METRICS` of one spectrum (as :func:`~directclr.analysis.spectrum_metrics`
    computes them for the spectrum stage), named ``<metric>_<kind>``."""
    metrics = spectrum_metrics(spectrum)
    return {f"{metric}_{kind}": metrics[metric] for metric in RANK_METRICS}


@torch.no_grad()
def _probe_representation(
    model: ContrastiveModel, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    r, z = model(images.float() / 255)
    model.train(was_training)
    return r.float().cpu(), z.float().cpu()


@torch.no_grad()
def lidar_metrics(
    model: ContrastiveModel, images: torch.Tensor, view: ViewAugmentation, views: int, seed: int
) -> dict[str, float]:
    """LiDAR (:func:`~directclr.analysis.lidar`) of r and z, with each of the uint8
    ``images`` a class of ``views`` augmented views (``view``'s recipe), computed with the
    model in eval mode. The views come from a generator of their own, seeded with ``seed``
    at every call: every record sees the same views, and the training augmentations'
    generator is never touched."""
    generator = torch.Generator().manual_seed(seed)
    batch = augment(images.repeat_interleave(views, dim=0), view, generator)
    was_training = model.training
    model.eval()
    r, z = model(batch)
    model.train(was_training)
    n = len(images)
    return {
        "lidar_r": lidar(r.float().cpu().reshape(n, views, -1)),
        "lidar_z": lidar(z.float().cpu().reshape(n, views, -1)),
    }


class _Progress:
    """A progress bar (step, loss, images/s, time left) on a terminal; silent otherwise."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("pretraining"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True,
            )  # fmt: skip
            self.task = self.bar.add_task("", total=total, completed=done, status="")
            self.bar.start()

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        if self.bar is not None:
            status = f"loss {loss:.4f}  {images_per_s:,.0f} img/s"
            self.bar.update(self.task, completed=step, status=status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Recorder(Protocol):
    """Hears of a training run as it goes (:class:`directclr.tracking.RunRecorder`)."""

    def start(self, key: str, history: list[dict[str, Any]]) -> Any: ...

    def record(self, row: dict[str, Any]) -> None: ...


def _record(recorder: Recorder, row: dict[str, Any]) -> None:
    """Pass an epoch's row on; a tracking store that fails mid-run costs its history
    points, never the training run (the catalog's history keeps every row)."""
    try:
        recorder.record(row)
    except Exception as error:  # noqa: BLE001 - any store or network failure
        logger.warning("pretraining: epoch %s not tracked (%s)", row.get("epoch"), error)


def _log(rank: int, message: str, *args) -> None:
    if rank == 0:
        logger.info(message, *args)


# ---------------------------------------------------------------------------------------------
# Several processes started from one


def _train_in_process(job: str, config: PretrainingConfig, recorder: Recorder | None) -> None:
    """One process of a job started by :func:`_pretrain_in_processes`; rank 0 leaves the
    result beside the job file for the parent."""
    spec = torch.load(job, weights_only=True)
    store = CheckpointStore(spec["checkpoints"]) if spec["checkpoints"] else None
    model, history, spectra = pretrain(
        source_from_spec(spec["source"]), None, config, spec["mean"], spec["std"], store,
        recorder,
    )  # fmt: skip
    if rank_and_world()[0] == 0:
        torch.save({"state_dict": model.state_dict(), "history": history.to_dict("list"),
                    "spectra": spectra.to_dict("list")}, job + ".result")  # fmt: skip


def _pretrain_in_processes(
    source: BatchSource,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
    checkpoints: CheckpointStore | None,
    recorder: Recorder | None = None,
) -> tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]:
    """``devices: N`` from a single process: start a job of N processes (nccl on CUDA,
    gloo on CPU), wait for it, and return rank 0's result. The data travel as a
    weights-only file; the settings, already validated, as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.pt")
        torch.save({
            "source": source.spec(),
            "mean": list(mean),
            "std": list(std),
            "checkpoints": str(checkpoints.directory) if checkpoints else None,
        }, job)  # fmt: skip
        spawn(_train_in_process, config.devices, (job, config, recorder))
        result = torch.load(job + ".result", weights_only=True)
    model = build_model(config, source.channels, mean, std, config.seed)
    model.load_state_dict(result["state_dict"])
    return model.eval(), pd.DataFrame(result["history"]), pd.DataFrame(result["spectra"])


# ---------------------------------------------------------------------------------------------
# The loop


def pretrain(
    images: torch.Tensor | BatchSource,
    labels: torch.Tensor | None,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
    checkpoints: CheckpointStore | None = None,
    recorder: Recorder | None = None,
) -> tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]:
    """Train ``config.method`` on uint8 ``images`` (N, C, H, W) with ``labels`` (the online
    probe's; -1 for unlabelled images), or on any :class:`~directclr.batches.BatchSource`
    (then ``labels`` is None), such as an image folder streamed from disk.

    Returns the model (on CPU, in eval mode), the history (one row per epoch: loss,
    learning rate, online-probe accuracy on the training batches, images/s, and every
    ``rank_every`` epochs the effective rank of r and z on a fixed batch of un-augmented
    images, and their LiDAR on fixed augmented views of the first ``lidar_samples`` of
    them) and the spectrum history (the covariance eigenvalues behind those ranks, long
    format: epoch, step, vectors, index, eigenvalue).

    ``recorder`` (rank 0's) hears of the run once it is known whether training resumes
    (``start(key, rows so far)``) and of every epoch's row (``record(row)``), as it is
    recorded: the MLflow run of :class:`~directclr.tracking.RunRecorder` follows training live.

    The run stops with a FloatingPointError, keeping its last good checkpoint, when the loss
    or any parameter or buffer becomes non-finite, or the representation collapses to a
    constant.
    """
    source = (
        TensorBatches(images, labels, config.batch_size, config.seed)
        if isinstance(images, torch.Tensor)
        else images
    )
    if config.devices > 1 and launched_world_size() == 1:
        return _pretrain_in_processes(source, config, mean, std, checkpoints, recorder)

    # -- setup: processes, device, data, model, optimisers -----------------------------------
    device = resolve_device(config.device)
    distributed = init_from_environment(device.type, config.dist_timeout_s)
    rank, world = rank_and_world()
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        # Fastest convolution algorithms for the (fixed) batch shape, and TF32 matmuls; CPU
        # numerics are left as they are.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} must split evenly over {world} processes")
    share = config.batch_size // world
    source.to(device)
    if source.num_images < config.batch_size:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set "
            f"({source.num_images} images); lower batch_size"
        )
    # channels_last: faster convolutions on CUDA, and 1.4-1.8x on CPU (oneDNN) for SmallCNN.
    channels_last = device.type in ("cuda", "cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    bf16, why = resolve_precision(config.precision, device, source.image_side)
    if rank == 0:
        logger.info("pretraining: %s on %s (%s)", "bf16 autocast" if bf16 else "float32",
                    device, why)  # fmt: skip
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    model = build_model(config, source.channels, mean, std, config.seed)
    if distributed and device.type == "cuda":
        # Batch statistics of the global batch, from one all_reduce per layer and no host
        # sync (nn.SyncBatchNorm syncs the host in every layer).
        model = convert_batchnorm(model)
    model = model.to(device, memory_format=memory_format)
    probe = nn.Linear(model.backbone.output_dim, source.num_classes).to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    # No buffer broadcast: every process computes the same BatchNorm statistics (of the
    # global batch on CUDA; GroupNorm or per-process ones otherwise, as before).
    ddp = dict(device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True)
    train_model = DDP(model, **ddp) if distributed else model
    train_probe = DDP(probe, **ddp) if distributed else probe
    base_lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    run = TrainingState(
        model=model,
        probe=probe,
        optimizer=build_optimizer(
            config.optimizer,
            model,
            base_lr,
            config.weight_decay,
            config.momentum,
            fused=device.type == "cuda" and config.optimizer != "lars",
        ),  # fmt: skip
        probe_optimizer=torch.optim.AdamW(probe.parameters(), lr=config.probe_lr),
        source=source,
        augment_rng=torch.Generator().manual_seed(config.seed + 1_000_003 * rank),
    )
    probe_images = source.probe_batch(min(source.num_images, 1024), config.seed + 1)
    lidar_images = probe_images[: config.lidar_samples] if config.lidar_samples >= 2 else None
    key = run_key(config, source.fingerprint(), world, device.type, bf16)
    steps_per_epoch = source.steps_per_epoch()
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = steps_per_epoch * config.warmup_epochs

    # -- resume ------------------------------------------------------------------------------
    state = checkpoints.load(key) if checkpoints is not None and config.resume else None
    if state is not None:
        run.restore(state, rank, str(checkpoints.path(key)))
        _log(rank, "pretraining: resuming %s from its checkpoint after epoch %d of %d",
             key, run.epoch, config.epochs)  # fmt: skip
    recorder = recorder if rank == 0 else None
    if recorder is not None:
        recorder.start(key, run.history)

    # -- one epoch at a time -----------------------------------------------------------------
    progress = _Progress(total_steps, run.epoch * steps_per_epoch, enabled=rank == 0)
    step = run.epoch * steps_per_epoch
    model.train()
    try:
        while run.epoch < config.epochs:
            epoch = run.epoch
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            labelled = torch.zeros((), device=device)
            first_bad = torch.full((), -1, device=device, dtype=torch.long)
            lrs: dict[int, float] = {}
            for b, (batch, batch_labels) in enumerate(source.epoch(epoch, rank, world)):
                lr = lrs[step] = learning_rate(step, total_steps, warmup_steps, base_lr)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                views = torch.cat([
                    augment(batch, config.augmentation.view1, run.augment_rng),
                    augment(batch, config.augmentation.view2, run.augment_rng),
                ]).contiguous(memory_format=memory_format)  # fmt: skip
                with autocast:
                    r, z = train_model(views)
                # The loss in float32, whatever the autocast. Negatives from the whole
                # global batch (both views in one gather); this process's anchors only.
                z1, z2 = gather_with_grad(z.float()).view(world, 2, share, -1).unbind(1)
                z1, z2 = z1.reshape(world * share, -1), z2.reshape(world * share, -1)
                anchors = (rank * share, (rank + 1) * share)
                if config.loss == "paper":
                    loss = paper_info_nce(z1, z2, config.temperature, anchors)
                else:
                    loss = info_nce(z1, z2, config.temperature, anchors)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()

                # The online probe: labels train it on the detached r, never the backbone.
                logits = train_probe(r.detach().float()[: len(batch)])
                probe_loss = F.cross_entropy(logits, batch_labels, ignore_index=-1)
                run.probe_optimizer.zero_grad(set_to_none=True)
                probe_loss.backward()
                run.probe_optimizer.step()

                loss_sum += loss.detach()
                correct += (logits.argmax(1) == batch_labels).sum()
                labelled += (batch_labels >= 0).sum()
                step += 1
                # Track the first non-finite step on the device; look at it (a host sync)
                # only every progress_every steps and at the end of the epoch.
                first_bad = torch.where(
                    (first_bad < 0) & ~torch.isfinite(loss.detach()), step - 1, first_bad
                )
                if step % config.progress_every == 0 or b == steps_per_epoch - 1:
                    # The earliest bad step of any process: one all_reduce(MAX) of
                    # total_steps - first_bad (0 where none), read once on the host.
                    latest = torch.where(first_bad >= 0, total_steps - first_bad, 0)
                    flagged = int(all_max(latest))
                    if flagged:
                        bad = total_steps - flagged
                        raise FloatingPointError(
                            f"the loss became non-finite at step {bad} (epoch {epoch + 1}, lr "
                            f"{lrs[bad]:.3g}); the last checkpoint is kept. Lower lr, raise "
                            f"temperature or set precision=fp32, then run again"
                        )
                    seconds = time.perf_counter() - start
                    progress.update(step, loss.item(), (b + 1) * config.batch_size / seconds)
            run.epoch = epoch + 1

            # -- record the epoch, and stop if the model has gone bad ------------------------
            loss_sum, correct, labelled = (all_sum(t) for t in (loss_sum, correct, labelled))
            seconds = time.perf_counter() - start
            row = {
                "epoch": run.epoch,
                "step": step,
                "loss": float(loss_sum) / (steps_per_epoch * world),
                "lr": lr,
                "online_probe_accuracy": float(correct) / max(float(labelled), 1.0),
                "images_per_s": steps_per_epoch * config.batch_size / seconds,
                "seconds": seconds,
                **{
                    f"{metric}_{kind}": float("nan")
                    for kind in ("r", "z")
                    for metric in RANK_METRICS
                },
                **dict.fromkeys(LIDAR_COLUMNS, float("nan")),
            }
            check_finite_state(model, probe, step, lr)
            probe_r, probe_z = _probe_representation(model, probe_images)
            check_not_constant(probe_r, step, lr)
            if run.epoch % config.rank_every == 0 or run.epoch == config.epochs:
                spectrum_r = embedding_spectrum(probe_r.double())
                spectrum_z = embedding_spectrum(probe_z.double())
                row |= rank_metrics(spectrum_r, "r") | rank_metrics(spectrum_z, "z")
                if lidar_images is not None:
                    row |= lidar_metrics(
                        model, lidar_images, config.augmentation.view1, config.lidar_views,
                        config.seed + 2,
                    )  # fmt: skip
                lam_r, lam_z = spectrum_r.eigenvalues, spectrum_z.eigenvalues
                spectra = {"r": torch.from_numpy(lam_r), "z": torch.from_numpy(lam_z)}
                run.spectra.append({"epoch": run.epoch, "step": step, **spectra})
            run.history.append(row)
            if recorder is not None:
                _record(recorder, row)
            _log(
                rank,
                "epoch %d/%d  loss %.4f  lr %.2e  online probe %.3f  %.0f img/s  "
                "erank r %.1f z %.1f",
                row["epoch"], config.epochs, row["loss"], row["lr"],
                row["online_probe_accuracy"], row["images_per_s"], row["effective_rank_r"],
                row["effective_rank_z"],
            )  # fmt: skip

            # -- save ------------------------------------------------------------------------
            if checkpoints is not None and (
                run.epoch % config.checkpoint_every == 0 or run.epoch == config.epochs
            ):
                augment_states = all_gather_objects(run.augment_rng.get_state())
                if rank == 0:
                    checkpoints.save(key, run.checkpoint(key, augment_states))
                barrier()  # every process resumes from the same, complete checkpoint
    finally:
        progress.close()
    model.eval()
    return model.cpu(), pd.DataFrame(run.history), spectrum_history(run.spectra)


@torch.no_grad()
def random_init_model(
    source: BatchSource, config: PretrainingConfig, mean: list[float], std: list[float]
) -> ContrastiveModel:
    """The control: ``config``'s model with weights drawn from ``config.seed``, never trained.

    Its BatchNorm running statistics are re-estimated, without gradient, as the plain
    average over one pass of the training images (the same images pretraining sees, in the
    same batches), so the control is the best an untrained network of this architecture
    gives in eval mode, not one whose statistics are BatchNorm's initial zeros and ones.
    Returns the model on CPU in eval mode.
    """
    device = resolve_device(config.device)
    model = build_model(config, source.channels, mean, std, config.seed).to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch seen
    model.train()
    source.to(device)
    for batch, _ in source.epoch(0):
        model(batch.float() / 255)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval().cpu()


def spectrum_history(spectra: list[dict]) -> pd.DataFrame:
    """Long-format table (epoch, step, vectors, index, eigenvalue) of recorded spectra."""
    frames = [
        pd.DataFrame({
            "epoch": record["epoch"],
            "step": record["step"],
            "vectors": kind,
            "index": np.arange(1, len(record[kind]) + 1),
            "eigenvalue": record[kind].numpy(),
        })
        for record in spectra
        for kind in ("r", "z")
    ]  # fmt: skip
    columns = ["epoch", "step", "vectors", "index", "eigenvalue"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
