"""Small CPU work on one thread: torch's (:func:`one_cpu_thread`) or BLAS's
(:func:`one_blas_thread`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch
from threadpoolctl import ThreadpoolController


@contextmanager
def one_cpu_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run torch's CPU operations inside the block on one thread; the count is restored after.

    For work made of many small operations (a batch of small images through the augmentation
    engine, the toys' 16 x 16 matrices): splitting each across threads gains little, and on a
    machine whose cores are busy every operation then waits for a descheduled helper thread.
    Measured on a shared 2-core machine: two augmented views of 256 images took 10-30 ms on
    one thread and 0.1-4 s on two; a toy sweep 2.9 s against 24 s. On other devices it does
    nothing. Usable as a decorator too.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@cache
def _blas_pools() -> ThreadpoolController:
    # Finding the loaded BLAS libraries walks every shared library of the process: 5 ms
    # here, more with CUDA's libraries loaded; once is enough (numpy's and scipy's BLAS are
    # loaded by the time anything asks).
    import scipy.linalg  # noqa: F401 - its BLAS, loaded before the libraries are listed

    return ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run numpy's and scipy's BLAS and LAPACK inside the block on one thread (for calls that
    are memory-bound, where a second thread only fights torch's for the cores); the count is
    restored after. The libraries are found once per process, not at every call."""
    with _blas_pools().limit(limits=1, user_api="blas"):
        yield
