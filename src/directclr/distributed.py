"""Data-parallel training across processes: torch.distributed with nccl on CUDA, gloo on CPU.

A job is either launched by ``torchrun`` (each process finds RANK, WORLD_SIZE and
LOCAL_RANK in its environment) or started by :func:`spawn` from a single process that asked
for ``devices: N``. Each process trains on its shard of every global batch; InfoNCE sees the
negatives of the whole global batch through :func:`gather_with_grad`.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside a job)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_environment(device_type: str, timeout_s: float) -> bool:
    """Join the job torchrun (or :func:`spawn`) described in the environment, if any.

    Returns whether this process is part of a job of more than one process. A collective
    that waits longer than ``timeout_s`` (a rank died or hung) fails instead of hanging.
    """
    if not dist.is_available() or launched_world_size() <= 1:
        return False
    if not dist.is_initialized():
        # On CUDA, nccl for CUDA tensors and gloo for CPU ones (flags, objects): the group
        # serves a job whichever stage joined it first (data_prep joins it on the host).
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def rank_zero_first(work: Callable[[], T], timeout_s: float = 600, poll_s: float = 0.5) -> T:
    """``work()`` on rank 0 first, then on every other rank of the job (each returns its own
    result); outside a job (WORLD_SIZE 1), just ``work()``. For work that writes shared
    files, such as a download: rank 0 writes them, the others then find them in place.

    Joins the job's process group if no stage has yet (``timeout_s`` is then its collective
    timeout). However long rank 0's work takes, no collective waits on it: rank 0 works in a
    thread while every rank polls, every ``poll_s`` seconds, a flag it all-reduces on the
    host. A failure on rank 0 stops every rank.
    """
    if not dist.is_available() or launched_world_size() <= 1:
        return work()
    init_from_environment("cuda" if torch.cuda.is_available() else "cpu", timeout_s)
    rank = dist.get_rank()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # noqa: BLE001 - re-raised on this rank below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True) if rank == 0 else None
    if thread is not None:
        thread.start()
    while True:
        # 0: rank 0 still working; 1: done; 2: failed.
        state = 0 if thread is None or thread.is_alive() else 1 + ("error" in outcome)
        flag = all_max(torch.tensor([state]))
        if int(flag) > 0:
            break
        time.sleep(poll_s)
    if int(flag) == 2:  # every rank tells rank 0's error
        message = [f"{type(outcome['error']).__name__}: {outcome['error']}" if rank == 0 else ""]
        dist.broadcast_object_list(message, src=0)
        if rank == 0:
            raise outcome["error"]
        raise RuntimeError(f"rank 0 failed ({message[0]}); rank {rank} stops with it")
    return outcome["result"] if rank == 0 else work()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every process the gradient of its own rows, summed
    over all processes (``torch.distributed.all_gather`` alone returns no gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` from every process, in rank order, differentiable."""
    if rank_and_world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def _all_reduce(value: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    """``op`` of a tensor over all processes, into a copy (the tensor itself outside a job):
    one all_reduce on the tensor's device, no host sync."""
    if rank_and_world()[1] > 1:
        value = value.clone()
        dist.all_reduce(value, op=op)
    return value


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes (the tensor itself outside a job)."""
    return _all_reduce(value, dist.ReduceOp.SUM)


def all_max(value: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of a tensor over all processes (the tensor itself outside a job)."""
    return _all_reduce(value, dist.ReduceOp.MAX)


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object from every process, in rank order."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, errors: str, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    try:
        fn(*args)
    except BaseException:
        # Record when and why this process failed: the first failure is the cause, the
        # others (connections reset by the dead process) are its consequences.
        with open(os.path.join(errors, f"rank{rank}.txt"), "w") as f:
            f.write(f"{time.time()}\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable, processes: int, args: tuple) -> None:
    """Run ``fn(*args)`` in ``processes`` new processes forming one job on this machine.

    If any process fails, the others are stopped and a RuntimeError carries the error of
    the process that failed first (the cause, not the collectives it broke).
    """
    with tempfile.TemporaryDirectory() as errors:
        try:
            mp.spawn(_child, args=(processes, _free_port(), errors, fn, args), nprocs=processes,
                     join=True)  # fmt: skip
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            reports = []
            for name in os.listdir(errors):
                with open(os.path.join(errors, name)) as f:
                    when, _, trace = f.read().partition("\n")
                reports.append((float(when), name.removesuffix(".txt"), trace))
            if not reports:
                raise
            _, rank, trace = min(reports)
            raise RuntimeError(f"the training job stopped: {rank} failed first:\n{trace}") from err


# ---------------------------------------------------------------------------------------------
# Batch normalisation over the global batch


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the gradient of a sum every process holds is the
    sum of every process's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation with the statistics of the job's global batch: a replacement for
    ``nn.SyncBatchNorm`` (same parameters, buffers and state-dict keys) that never syncs the
    host. Each process sums, per channel, its values, their squares and their count, and
    one ``all_reduce`` of those 2C + 1 numbers gives the global mean and variance; autograd
    differentiates through it (the backward all-reduces the gradient of those sums), so the
    gradients are those of batch norm over the concatenated global batch.

    The sums are taken in float32 about the running mean (the same on every process), which
    keeps E[x^2] - E[x]^2 from cancelling when a channel's mean is large against its spread.
    Outside a job of several processes, and in eval mode, it is plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        world = rank_and_world()[1]
        if not self.training or world == 1:
            return super().forward(x)
        factor = 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        shift = self.running_mean.detach().float() if self.running_mean is not None else None
        centred = xf - shift.view(shape) if shift is not None else xf
        count = torch.full((1,), x.numel() // x.shape[1], device=x.device, dtype=torch.float32)
        local = torch.cat([centred.sum(dims), centred.square().sum(dims), count])
        total = _AllReduceSum.apply(local)
        channels = x.shape[1]
        n = total[-1]
        offset = total[:channels] / n
        var = (total[channels : 2 * channels] / n - offset.square()).clamp_min(0)
        mean = offset + shift if shift is not None else offset
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.float()
        out = (xf - mean.view(shape)) * scale.view(shape)
        if self.affine:
            out = out + self.bias.float().view(shape)
        return out.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm replaced by :class:`GlobalBatchNorm` (parameters and
    buffers kept), as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for its own."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            with torch.no_grad():
                converted.weight = module.weight
                converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module
