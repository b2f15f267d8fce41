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
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


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
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


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


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes (the tensor itself outside a job)."""
    if rank_and_world()[1] > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


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
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
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
