"""A foreign projector as one of this project's projectors, computing the same z.

The paper's and solo-learn's projectors (Linear-BN-ReLU-Linear, with or without a final
BatchNorm and Linear biases) become this project's ``simclr`` MLP, a single Linear without bias
becomes ``simclr_linear``; anything else raises ValueError saying why (the import then makes
z = r).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from directclr.checkpoint_import.layouts import listing


@dataclass
class ConvertedProjector:
    """A foreign projector as one of this project's methods, with that method's state dict."""

    method: str
    hidden_dim: int | None
    out_dim: int
    state_dict: dict[str, torch.Tensor]
    description: str


def _layers(state: dict[str, torch.Tensor]) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The layers of an ``nn.Sequential`` state dict (or of a lone layer's), by index."""
    if all("." not in key for key in state):
        return [(0, state)]
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or "." in name:
            raise ValueError(f"its keys ({listing(list(state))}) are not an nn.Sequential's")
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
