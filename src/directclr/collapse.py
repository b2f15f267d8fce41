"""How collapsed a model's exported vectors are: the spectrum stage's measurements.

Which vectors are measured (:func:`vectors_to_analyse`: r and z of one split and, for
DirectCLR, r's two parts), their covariance spectra and collapse metrics
(:func:`~directclr.analysis.spectrum_metrics`), each with its LiDAR on the augmented views of
training images that the export made (:func:`lidar_views_to_analyse`), and the conventions
that say how to read them. :func:`measure_collapse` gives the eigenvalue table and the
metrics; :func:`spectra_figure` draws the table; :class:`SpectrumConfig` is the settings.
"""

from __future__ import annotations

from typing import Literal

import matplotlib.pyplot as plt
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from directclr.analysis import (
    CONVENTION,
    LIDAR_CONVENTION,
    LIDAR_DELTA,
    LIDAR_EPS,
    embedding_spectrum,
    lidar,
    lidar_cap,
    spectrum_metrics,
)
from directclr.errors import BadSettingError
from directclr.models import ModelConfig
from directclr.plots import spectrum_figure
from directclr.projectors import HEAD, TAIL, leading_parts

Split = Literal["train", "val", "test"]
# The eigenvalue table's columns, in order.
COLUMNS = ["vectors", "split", "index", "eigenvalue", "log10_eigenvalue", "singular_value",
           "uncentred_eigenvalue"]  # fmt: skip
LIDAR_FIELDS = ("lidar_convention", "lidar_split", "lidar_samples", "lidar_views", "lidar_delta",
                "lidar_eps", "lidar_seed", "lidar_augmentation")  # fmt: skip


class SpectrumConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: Split = Field(
        "train",
        description="the one split whose vectors give every spectrum, rank and collapse count "
        "(train: the largest, so N - 1 caps the fewest dimensions)",
    )
    cliff_decades: float = Field(
        1.0, gt=0, description="a cliff drops at least this many decades between neighbours"
    )
    cliff_slope: float = Field(
        10.0, gt=0, description="... and is locally steeper than the power law i^-cliff_slope"
    )
    power_law_range: tuple[int, int | None] = Field(
        (1, None),
        description="1-based ranks [first, last] of the power-law fit; last null: the last "
        "non-collapsed rank",
    )
    top_k: int = Field(10, ge=1, description="the variance share of the top k eigenvalues")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the Gram product and eigenproblems run, in float64: auto is the "
        "CUDA GPU when there is one, else the CPU (the same eigenvalues within 1e-10 of each "
        "one above 1e-6 of the largest)",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda asked for, but no CUDA GPU is present; use auto or cpu")
        return value

    @field_validator("power_law_range")
    @classmethod
    def _check_range(cls, value: tuple[int, int | None]) -> tuple[int, int | None]:
        first, last = value
        if first < 1 or (last is not None and last <= first):
            raise ValueError(f"need 1 <= first < last (or last null), got {list(value)}")
        return value


def spectrum_device(setting: str) -> torch.device:
    """The device a spectrum runs on: ``auto`` is CUDA when present, else the CPU (never
    Apple's MPS, which has no float64)."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def check_top_k(top_k: int, dim: int) -> None:
    """``spectrum.top_k`` larger than r's ``dim`` dimensions would be cut to ``dim`` without
    a word (a share of all the variance, 1.0): refuse it, naming the largest valid value."""
    if top_k > dim:
        raise BadSettingError(
            f"spectrum.top_k={top_k} is larger than the {dim} dimensions of r, whose variance "
            f"share it reports; set spectrum.top_k to at most {dim}"
        )


def vectors_to_analyse(
    embeddings: dict, config: ModelConfig, split: str
) -> dict[str, torch.Tensor]:
    """r and z of ``split``; for directclr also r's two parts
    (:func:`~directclr.projectors.leading_parts`)."""
    if f"{split}_r" not in embeddings:
        available = sorted(
            k.removesuffix("_r") for k in embeddings if k.endswith("_r") and k != "lidar_r"
        )
        raise ValueError(
            f"spectrum.split={split}: the embeddings have no {split} split (they have "
            f"{', '.join(available)}); set spectrum.split to one of them"
        )
    return _with_parts(embeddings[f"{split}_r"], embeddings[f"{split}_z"], config)


def lidar_views_to_analyse(embeddings: dict, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The augmented views (n, q, d) of the embeddings stage, parted as
    :func:`vectors_to_analyse` parts the vectors; empty when none were exported."""
    if "lidar_r" not in embeddings:
        return {}
    return _with_parts(embeddings["lidar_r"], embeddings["lidar_z"], config)


def _with_parts(r: torch.Tensor, z: torch.Tensor, config: ModelConfig) -> dict[str, torch.Tensor]:
    return {"r": r, "z": z, **leading_parts(r, config.method, config.d0)}


def lidar_fields(embeddings: dict) -> dict:
    """What LiDAR was measured on, for the metrics' convention fields: the convention, the n
    training images (its classes), the q views of each, delta and eps, and the views'
    augmentation and seed; all None when the embeddings carry no views."""
    settings = embeddings.get("lidar_settings") if "lidar_r" in embeddings else None
    if settings is None:
        return dict.fromkeys(LIDAR_FIELDS)
    n, q = embeddings["lidar_r"].shape[:2]
    return {
        "lidar_convention": LIDAR_CONVENTION, "lidar_split": settings.get("split", "train"),
        "lidar_samples": int(n), "lidar_views": int(q), "lidar_delta": LIDAR_DELTA,
        "lidar_eps": LIDAR_EPS, "lidar_seed": settings.get("seed"),
        "lidar_augmentation": settings.get("augmentation"),
    }  # fmt: skip


def measure_collapse(
    embeddings: dict, config: ModelConfig, params: SpectrumConfig
) -> tuple[pd.DataFrame, dict]:
    """Spectra and collapse metrics of r and z (for directclr also of r's two parts) on
    ``params.split``: the eigenvalue table (:data:`COLUMNS`) and the metrics, one entry
    ``<vectors>_<split>`` per set of vectors beside the conventions and settings they were
    measured with.

    Each set of vectors also gets its LiDAR (:func:`~directclr.analysis.lidar`) and
    ``lidar_cap``, on the augmented views of training images that the embeddings stage
    exported (whatever ``params.split``; None for embeddings without views)."""
    split = params.split
    tables, metrics = [], {}
    views = lidar_views_to_analyse(embeddings, config)
    vectors = vectors_to_analyse(embeddings, config, split)
    check_top_k(params.top_k, vectors["r"].shape[-1])
    device = spectrum_device(params.device)
    for name, x in vectors.items():
        spectrum = embedding_spectrum(
            x, precision="float64", vectors=f"{name} ({split} split)", device=device
        )
        tables.append(spectrum.table().assign(vectors=name, split=split))
        metrics[f"{name}_{split}"] = spectrum_metrics(
            spectrum, params.cliff_decades, params.cliff_slope, params.power_law_range,
            params.top_k,
        )  # fmt: skip
        metrics[f"{name}_{split}"].update(
            lidar=lidar(views[name], vectors=f"{name} (augmented train views)") if views else None,
            lidar_cap=lidar_cap(views[name].shape[0], views[name].shape[-1]) if views else None,
        )
    metrics.update(
        split=split,
        convention=CONVENTION,
        method=config.method,
        d0=config.d0,
        cliff_decades=params.cliff_decades,
        cliff_slope=params.cliff_slope,
        power_law_range=list(params.power_law_range),
        top_k=params.top_k,
        **lidar_fields(embeddings),
    )
    return pd.concat(tables, ignore_index=True)[COLUMNS], metrics


def spectra_figure(table: pd.DataFrame, metrics: dict) -> plt.Figure:
    """The spectra of :func:`measure_collapse`'s table, one line per set of vectors, with
    where N - 1 caps the rank when r has structural zeros."""
    split = metrics["split"]
    r = metrics[f"r_{split}"]
    spectra = {
        f"{name} ({len(rows)}-d)": rows["eigenvalue"].to_numpy()
        for name, rows in table.groupby("vectors", sort=False)
    }
    return spectrum_figure(
        spectra,
        f"{metrics['method']}: embedding spectrum ({split} split, N = {r['samples']})",
        rank_limit=r["max_rank"] if r["structural_zeros"] else None,
    )


def collapse_summary(metrics: dict) -> list[str]:
    """What :func:`measure_collapse` found, in a few lines for the stage's log."""
    split = metrics["split"]
    r, z = metrics[f"r_{split}"], metrics[f"z_{split}"]
    lines = [
        f"spectrum: embeddings -> spectra ({split} split: effective rank r "
        f"{r['effective_rank']:.1f} of {r['dimensions']:d}, z {z['effective_rank']:.1f} of "
        f"{z['dimensions']:d}; collapsed r {r['collapsed_dimensions']:d}, z "
        f"{z['collapsed_dimensions']:d}; structural zeros r {r['structural_zeros']:d}; RankMe "
        f"r {r['rankme']:.1f})"
    ]
    if metrics["lidar_samples"] is not None:
        lines.append(
            f"spectrum: LiDAR r {r['lidar']:.1f}, z {z['lidar']:.1f} (of at most "
            f"{r['lidar_cap']:d} and {z['lidar_cap']:d}; {metrics['lidar_samples']:d} train "
            f"images x {metrics['lidar_views']:d} views)"
        )
    if f"{TAIL}_{split}" in metrics:
        head, tail = metrics[f"{HEAD}_{split}"], metrics[f"{TAIL}_{split}"]
        lines.append(
            f"spectrum: directclr {HEAD} collapsed {head['collapsed_dimensions']:d} of "
            f"{head['dimensions']:d}, {TAIL} collapsed {tail['collapsed_dimensions']:d} of "
            f"{tail['dimensions']:d} ({split})"
        )
    return lines
