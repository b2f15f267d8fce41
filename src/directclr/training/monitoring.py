"""Watching a pretraining run: the guards that stop it producing garbage, the label-free
measures recorded each epoch (effective rank and its kin, LiDAR), the epoch's row of the
history, and the progress bar and recorder that show it as it goes.

Nothing here changes the model; every measure runs in eval mode without gradient and draws
its augmented views from a generator of its own, so watching a run never changes its numbers.
The measures stay where the run computes: on a GPU the guards reduce every tensor there and
the spectra are float64 Gram products and eigenproblems there
(:func:`~directclr.analysis.embedding_spectrum`); the host waits on the device a handful of
times per epoch, not once per tensor. Only LiDAR's views travel to the host (a few hundred
vectors).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from directclr.analysis import Spectrum, embedding_spectrum, lidar, spectrum_metrics
from directclr.augment import ViewAugmentation, augment
from directclr.checkpoints import first_non_finite
from directclr.distributed import all_max
from directclr.errors import TrainingDiverged
from directclr.models import ContrastiveModel
from directclr.training.config import PretrainingConfig

logger = logging.getLogger(__name__)

# The label-free measures the history records every rank_every epochs, for r and for z.
RANK_METRICS = ("effective_rank", "rankme", "nesum", "participation_ratio", "normalised_std")
# Beside them: LiDAR of r and z on augmented views of a few probe images (lidar_metrics).
LIDAR_COLUMNS = ("lidar_r", "lidar_z")

# ---------------------------------------------------------------------------------------------
# Guards: stop a run that produces garbage, keeping its last good checkpoint


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating tensor of ``tensors`` is finite: one reduction per tensor on
    its device and one wait for the answer (tensors on one device)."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return not checks or bool(torch.stack(checks).all())


def check_finite_state(model: nn.Module, probe: nn.Module, step: int, lr: float) -> None:
    """Stop the run if any parameter or buffer (BatchNorm's running statistics included) is
    no longer finite: such a model maps every image to the same or to no representation.
    Only a state that fails the one fused check is searched tensor by tensor for a name."""
    modules = (("model", model), ("online probe", probe))
    if all_finite([t for _, module in modules for t in module.state_dict().values()]):
        return
    for prefix, module in modules:
        bad = first_non_finite(module.state_dict())
        if bad is not None:
            raise TrainingDiverged(
                f"{prefix} tensor {bad} became non-finite by step {step} (lr {lr:.3g}); the last "
                f"checkpoint is kept and this state is not saved. Lower lr, use adamw or lars, "
                f"or set precision=fp32, then run again"
            )


# The representation guard's bounds (check_not_constant), on the fixed probe batch's r in
# float64, measured on digits (default recipe; issue 21). The share of the normalised vectors'
# second moment off their top direction (direction_spread) was at least 0.021 in every healthy
# state: 0.030-0.032 for freshly built networks (all-positive ReLU outputs, mean |cos| to
# their mean direction 0.985), 0.21 for the random_init control, 0.021-0.09 over epochs 1-20
# of directclr, simclr and no_projector, whose mean squared norms stayed below 150. After
# epoch 1 at lr 10-1e5 (adamw) or 100-1e5 (sgd), any of the three methods, it was 3e-8 to
# 2.4e-4 (within cos 0.99999 of one direction is about 2e-5), with mean squared norms 1.6e11
# to 8e22. A run that is merely degenerate (identity augmentation on noise images, group
# norm) gives about 1e-3 at ordinary norms, and is left to run. Every wrecked run above
# trips the norm bound (8 decades above healthy norms, 16x below the smallest wrecked one),
# the direction bound, or both; each bound alone also keeps float64's spectrum and LiDAR
# away from such values.
DIRECTION_SPREAD_MIN = 1e-4
SQUARED_NORM_MAX = 1e10


def direction_spread(r: torch.Tensor) -> float:
    """How far the rows of ``r`` spread off the one direction that fits them best: 1 - the
    top eigenvalue's share of the second moment 1/N sum u u^T of the L2-normalised rows u,
    that is the mean squared sine of their angle to that direction (rows that are zero left
    out). 0 for vectors that all lie on one line (either way along it), (d - 1) / d at most.
    Unlike the variance, it ignores the vectors' lengths, which may still vary a lot when
    every vector points the same way."""
    return float(_direction_spread(r))


def _direction_spread(r: torch.Tensor) -> torch.Tensor:
    """:func:`direction_spread` as a 0-d tensor on ``r``'s device. Zero rows get weight 0
    instead of being dropped, so the shapes (and so the work) never depend on the data."""
    norms = torch.linalg.vector_norm(r, dim=1, keepdim=True)
    nonzero = norms > 0
    u = r / torch.where(nonzero, norms, 1.0)
    count = nonzero.sum()
    gram = u @ u.T if len(u) < u.shape[1] else u.T @ u
    top = torch.linalg.eigvalsh(gram)[-1]
    return torch.where(count > 0, (1.0 - top / count.clamp_min(1)).clamp_min(0.0), 0.0)


def check_not_constant(r: torch.Tensor, step: int, lr: float) -> None:
    """Stop the run if the representation of the fixed probe batch has collapsed or exploded:
    its total variance below 1e-8 of its mean squared norm (or not finite) is a model that
    maps every image to one point; a mean squared norm above :data:`SQUARED_NORM_MAX` one
    whose outputs have blown up; and a :func:`direction_spread` below
    :data:`DIRECTION_SPREAD_MIN` one that maps every image onto one line, however much the
    lengths along it vary (the variance alone misses that one). Whatever its loss says, such
    a model is garbage, and the measures that follow (the spectrum, LiDAR's Cholesky) would
    fail on it or report nonsense. Only reads ``r``."""
    r = r.double()
    # Non-finite entries fail the variance test; zeroed, they cannot break the eigensolver
    # that measures the spread in the same trip to the device.
    finite_r = torch.where(torch.isfinite(r), r, 0.0)
    variance, squared_norm, spread = torch.stack([
        r.var(0, unbiased=False).sum(), (r * r).sum(1).mean(), _direction_spread(finite_r)
    ]).tolist()  # fmt: skip
    advice = "the last checkpoint is kept and this state is not saved. Lower lr or raise "
    advice += "temperature, then run again"
    if not math.isfinite(variance) or variance <= 1e-8 * squared_norm:
        raise TrainingDiverged(
            f"the representation collapsed to a constant by step {step} (lr {lr:.3g}): its "
            f"variance over the probe batch is {variance:.3g} against a mean squared norm of "
            f"{squared_norm:.3g}; {advice}"
        )
    if squared_norm > SQUARED_NORM_MAX:
        raise TrainingDiverged(
            f"the representation exploded by step {step} (lr {lr:.3g}): the mean squared norm "
            f"of r over the probe batch is {squared_norm:.3g}, above {SQUARED_NORM_MAX:.0e}; "
            f"{advice}"
        )
    if spread < DIRECTION_SPREAD_MIN:
        degrees = math.degrees(math.asin(math.sqrt(spread)))
        raise TrainingDiverged(
            f"the representation collapsed to one direction by step {step} (lr {lr:.3g}): the "
            f"vectors r of the probe batch all lie along one line (at an rms angle of "
            f"{degrees:.2g} degrees to it: a share {spread:.3g} of their normalised second "
            f"moment off it, below {DIRECTION_SPREAD_MIN:.0e}); {advice}"
        )


class NonFiniteWatch:
    """Notes the first step of an epoch whose loss is not finite, on the device, with no
    host sync; :meth:`check` (a sync, so called only every few steps) raises if any
    process has seen one.

    Across processes the earliest bad step wins: one all_reduce(MAX) of
    ``total_steps - first_bad`` (0 where none).
    """

    def __init__(self, device: torch.device, total_steps: int) -> None:
        self.total_steps = total_steps
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.lrs: dict[int, float] = {}

    def update(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """Record step ``step``'s (detached) loss and learning rate."""
        self.lrs[step] = lr
        bad_now = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(bad_now, step, self.first_bad)

    def check(self, epoch: int) -> None:
        """Raise FloatingPointError naming the earliest non-finite step of any process."""
        latest = torch.where(self.first_bad >= 0, self.total_steps - self.first_bad, 0)
        flagged = int(all_max(latest))
        if flagged:
            bad = self.total_steps - flagged
            raise TrainingDiverged(
                f"the loss became non-finite at step {bad} (epoch {epoch + 1}, lr "
                f"{self.lrs[bad]:.3g}); the last checkpoint is kept. Lower lr, raise "
                f"temperature or set precision=fp32, then run again"
            )


# ---------------------------------------------------------------------------------------------
# Label-free measures of the representation, on a fixed batch of training images


@torch.no_grad()
def probe_representation(
    model: ContrastiveModel, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """r and z (float32) of uint8 ``images``, with the model in eval mode: where the model
    is, for the float64 measures that follow, or on the CPU from a device without float64
    (Apple's MPS)."""
    was_training = model.training
    model.eval()
    r, z = model(images.float() / 255)
    model.train(was_training)
    if r.device.type not in ("cpu", "cuda"):
        r, z = r.cpu(), z.cpu()
    return r.float(), z.float()


def rank_metrics(spectrum: Spectrum, kind: str) -> dict[str, float]:
    """:data:`RANK_METRICS` of one spectrum (as :func:`~directclr.analysis.spectrum_metrics`
    computes them for the spectrum stage), named ``<metric>_<kind>``."""
    metrics = spectrum_metrics(spectrum)
    return {f"{metric}_{kind}": metrics[metric] for metric in RANK_METRICS}


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
    # One trip to the host for both (LiDAR's float64 algebra is small: a Cholesky factor of
    # d x d and an eigenproblem of n x n).
    both = torch.cat([r.float(), z.float()], dim=1).cpu().reshape(n, views, -1)
    return {
        "lidar_r": lidar(both[..., : r.shape[1]], vectors="r of the LiDAR images"),
        "lidar_z": lidar(both[..., r.shape[1] :], vectors="z of the LiDAR images"),
    }


def spectrum_record(
    probe_r: torch.Tensor, probe_z: torch.Tensor
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The rank measures of r and z of the probe batch, and the covariance eigenvalues
    behind them (what the spectrum history keeps), computed in float64 where the vectors
    are."""
    spectrum_r = embedding_spectrum(probe_r.double(), vectors="r of the probe batch")
    spectrum_z = embedding_spectrum(probe_z.double(), vectors="z of the probe batch")
    metrics = rank_metrics(spectrum_r, "r") | rank_metrics(spectrum_z, "z")
    eigenvalues = {
        "r": torch.from_numpy(spectrum_r.eigenvalues),
        "z": torch.from_numpy(spectrum_z.eigenvalues),
    }
    return metrics, eigenvalues


def end_of_epoch_measures(
    model: ContrastiveModel,
    probe: nn.Module,
    probe_images: torch.Tensor,
    lidar_images: torch.Tensor | None,
    config: PretrainingConfig,
    epoch: int,
    step: int,
    lr: float,
) -> tuple[dict[str, float], dict | None]:
    """What the end of epoch ``epoch`` (1-based; at ``step``, learning rate ``lr``) checks and
    measures: the guards (every tensor finite, the representation of the probe batch not
    constant), then on a record epoch (every ``rank_every``, and the last) the rank measures
    of r and z, LiDAR on ``lidar_images`` (None: no LiDAR) and the spectrum history's record.
    Returns the measures for the epoch's row and the record (None on other epochs)."""
    check_finite_state(model, probe, step, lr)
    probe_r, probe_z = probe_representation(model, probe_images)
    check_not_constant(probe_r, step, lr)
    if epoch % config.rank_every and epoch != config.epochs:
        return {}, None
    measures, eigenvalues = spectrum_record(probe_r, probe_z)
    if lidar_images is not None:
        view = config.augmentation.view1
        measures |= lidar_metrics(model, lidar_images, view, config.lidar_views, config.seed + 2)
    return measures, {"epoch": epoch, "step": step, **eigenvalues}


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


# ---------------------------------------------------------------------------------------------
# The history's row of an epoch


def epoch_record(
    epoch: int,
    step: int,
    loss_sum: float,
    correct: float,
    labelled: float,
    lr: float,
    steps: int,
    images: int,
    seconds: float,
) -> dict[str, float]:
    """An epoch's row of the training history, from its totals over every process: ``steps``
    steps of every process summed into ``loss_sum``, ``images`` images in ``seconds``. The
    rank and LiDAR columns are NaN until an epoch that measures them fills them in."""
    return {
        "epoch": epoch,
        "step": step,
        "loss": loss_sum / steps,
        "lr": lr,
        "online_probe_accuracy": correct / max(labelled, 1.0),
        "images_per_s": images / seconds,
        "seconds": seconds,
        **{f"{metric}_{kind}": float("nan") for kind in ("r", "z") for metric in RANK_METRICS},
        **dict.fromkeys(LIDAR_COLUMNS, float("nan")),
    }


def log_epoch(row: dict[str, float], epochs: int) -> None:
    """One line per epoch in the run's log."""
    logger.info(
        "epoch %d/%d  loss %.4f  lr %.2e  online probe %.3f  %.0f img/s  erank r %.1f z %.1f",
        row["epoch"], epochs, row["loss"], row["lr"], row["online_probe_accuracy"],
        row["images_per_s"], row["effective_rank_r"], row["effective_rank_z"],
    )  # fmt: skip


def training_summary(config: PretrainingConfig, images: int, history: pd.DataFrame) -> str:
    """One line for the log when a run has trained: its method, data and epochs, and the
    last epoch's loss, online probe and effective ranks."""
    last = history.iloc[-1]
    return (
        f"pretraining: {config.method} on {images:d} images, {config.epochs:d} epochs -> model "
        f"(final loss {last['loss']:.4f}, online probe {last['online_probe_accuracy']:.3f}, "
        f"effective rank r {last['effective_rank_r']:.1f}, z {last['effective_rank_z']:.1f})"
    )


# ---------------------------------------------------------------------------------------------
# Showing the run as it goes


class Progress:
    """A progress bar (step, loss, images/s, time left) on a terminal; silent otherwise."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
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


def record(recorder: Recorder, row: dict[str, Any]) -> None:
    """Pass an epoch's row on; a tracking store that fails mid-run costs its history
    points, never the training run (the catalog's history keeps every row)."""
    try:
        recorder.record(row)
    except Exception as error:  # noqa: BLE001 - any store or network failure
        logger.warning("pretraining: epoch %s not tracked (%s)", row.get("epoch"), error)
