"""Optimizers and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For a parameter p with gradient g in a group with ``adapt=True``:

        g <- g + weight_decay * p
        g <- g * eta * ||p|| / ||g||      (when both norms are positive)
        v <- momentum * v + g
        p <- p - lr * v

    Groups with ``adapt=False`` (biases and normalisation parameters, see
    :func:`parameter_groups`) skip both the weight decay and the trust ratio.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - documented in the class docstring
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Each group's parameters at once (torch._foreach_*): a few kernels per group, not a
        # few per parameter.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adapt"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where(
                    (p_norm > 0) & (g_norm > 0),
                    group["eta"] * p_norm / g_norm,
                    torch.ones_like(p_norm),
                )
                torch._foreach_mul_(grads, list(trust.unbind()))
            buffers, updates = [], []
            for p, g in zip(params, grads, strict=True):
                state = self.state[p]
                if "momentum_buffer" in state:
                    buffers.append(state["momentum_buffer"])
                    updates.append(g)
                else:
                    state["momentum_buffer"] = torch.clone(g).detach()
            if buffers:
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, updates)
            torch._foreach_add_(
                params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"]
            )
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, adapted by LARS) and biases/normalisation parameters
    (every parameter with at most one dimension: neither decayed nor adapted)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    momentum: float,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """``lars``, ``sgd`` (with momentum) or ``adamw``, with biases and normalisation
    parameters excluded from weight decay. ``fused`` uses the fused CUDA kernels."""
    groups = parameter_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for group in groups:
        group.pop("adapt")
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **extra)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **extra)
    raise ValueError(f"unknown optimizer {name!r}; choose lars, sgd or adamw")


def learning_rate(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr_ratio: float = 0.0
) -> float:
    """Linear warmup to ``base_lr``, then a cosine from ``base_lr`` down to
    ``final_lr_ratio * base_lr`` (0: down to zero).

    With q = (1 + cos(pi * t / T)) / 2, t the step after warmup and T the steps after
    warmup, the rate is ``base_lr * q + final_lr_ratio * base_lr * (1 - q)``: the paper's
    code decays this way to ``0.001 * base_lr``. Its warmup starts from 0 at the first step
    (``base_lr * step / warmup_steps``); this one reaches ``base_lr`` at the last warmup step
    (``base_lr * (step + 1) / warmup_steps``), one warmup step ahead of the paper's.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    q = 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * (q + final_lr_ratio * (1 - q))


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """The base learning rate for a batch: ``none``, ``linear`` (lr * B / 256, Goyal et al.)
    or ``sqrt`` (lr * sqrt(B / 256))."""
    if rule == "linear":
        return lr * batch_size / 256
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / 256)
    return lr
