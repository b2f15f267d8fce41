from __future__ import annotations

import logging
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
from directclr.models import ModelConfig, artifact_config
from directclr.plots import spectrum_figure, spectrum_history_figure
from directclr.projectors import has_leading_subvector

logger = logging.getLogger(__name__)


Split = Literal["train", "val", "test"]


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

    @field_validator("power_law_range")
    @classmethod
    def _check_range(cls, value: tuple[int, int | None]) -> tuple[int, int | None]:
        first, last = value
        if first < 1 or (last is not None and last <= first):
            raise ValueError(f"need 1 <= first < last (or last null), got {list(value)}")
        return value


def vectors_to_analyse(
    embeddings: dict, config: ModelConfig, split: str
) -> dict[str, torch.Tensor]:
    """r and z of ``split``; for directclr also r[:, :d0] and r[:, d0:], its two parts."""
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
    """r and z; for directclr also r[..., :d0] and r[..., d0:], its two parts."""
    vectors = {"r": r, "z": z}
    if has_leading_subvector(config.method) and config.d0 < r.shape[-1]:
        vectors["r[:d0]"] = r[..., : config.d0]
        vectors["r[d0:]"] = r[..., config.d0 :]
    return vectors


def _lidar_fields(embeddings: dict) -> dict:
    """What LiDAR was measured on, for the metrics' convention fields: the convention, the n
    training images (its classes), the q views of each, delta and eps, and the views'
    augmentation and seed; all None when the embeddings carry no views."""
    settings = embeddings.get("lidar_settings") if "lidar_r" in embeddings else None
    if settings is None:
        return dict.fromkeys(("lidar_convention", "lidar_split", "lidar_samples",
                              "lidar_views", "lidar_delta", "lidar_eps", "lidar_seed",
                              "lidar_augmentation"))  # fmt: skip
    n, q = embeddings["lidar_r"].shape[:2]
    return {
        "lidar_convention": LIDAR_CONVENTION, "lidar_split": settings.get("split", "train"),
        "lidar_samples": int(n), "lidar_views": int(q), "lidar_delta": LIDAR_DELTA,
        "lidar_eps": LIDAR_EPS, "lidar_seed": settings.get("seed"),
        "lidar_augmentation": settings.get("augmentation"),
    }  # fmt: skip


def compute_spectrum(
    embeddings: dict, model: dict, spectrum_history: pd.DataFrame, params: SpectrumConfig
) -> tuple[pd.DataFrame, dict, plt.Figure, plt.Figure]:
    """Spectra and collapse metrics of r and z (for directclr also of r[:, :d0] and r[:, d0:])
    on ``params.split``, a figure of those spectra and one of the spectrum over training.

    Each set of vectors also gets its LiDAR (:func:`~directclr.analysis.lidar`) and
    ``lidar_cap``, on the augmented views of training images that the embeddings stage
    exported (whatever ``params.split``; None for embeddings without views)."""
    config = artifact_config(model)
    split = params.split
    tables, metrics, spectra = [], {}, {}
    max_rank = None
    views = lidar_views_to_analyse(embeddings, config)
    for name, x in vectors_to_analyse(embeddings, config, split).items():
        spectrum = embedding_spectrum(x, precision="float64")
        tables.append(spectrum.table().assign(vectors=name, split=split))
        metrics[f"{name}_{split}"] = spectrum_metrics(
            spectrum, params.cliff_decades, params.cliff_slope, params.power_law_range,
            params.top_k,
        )  # fmt: skip
        metrics[f"{name}_{split}"].update(
            lidar=lidar(views[name]) if views else None,
            lidar_cap=lidar_cap(views[name].shape[0], views[name].shape[-1]) if views else None,
        )
        spectra[f"{name} ({spectrum.eigenvalues.size}-d)"] = spectrum.eigenvalues
        if name == "r":
            max_rank = spectrum.max_rank
    metrics.update(
        split=split,
        convention=CONVENTION,
        method=config.method,
        d0=config.d0,
        cliff_decades=params.cliff_decades,
        cliff_slope=params.cliff_slope,
        power_law_range=list(params.power_law_range),
        top_k=params.top_k,
        **_lidar_fields(embeddings),
    )
    columns = ["vectors", "split", "index", "eigenvalue", "log10_eigenvalue", "singular_value",
               "uncentred_eigenvalue"]  # fmt: skip
    table = pd.concat(tables, ignore_index=True)[columns]
    r, z = metrics[f"r_{split}"], metrics[f"z_{split}"]
    figure = spectrum_figure(
        spectra,
        f"{config.method}: embedding spectrum ({split} split, N = {r['samples']})",
        rank_limit=max_rank if r["structural_zeros"] else None,
    )
    history_figure = spectrum_history_figure(
        spectrum_history, "spectrum over training (fixed probe batch)", time="epoch"
    )
    logger.info(
        "spectrum: embeddings -> spectra (%s split: effective rank r %.1f of %d, z %.1f of %d; "
        "collapsed r %d, z %d; structural zeros r %d; RankMe r %.1f)",
        split, r["effective_rank"], r["dimensions"], z["effective_rank"], z["dimensions"],
        r["collapsed_dimensions"], z["collapsed_dimensions"], r["structural_zeros"], r["rankme"],
    )  # fmt: skip
    if views:
        logger.info(
            "spectrum: LiDAR r %.1f, z %.1f (of at most %d and %d; %d train images x %d views)",
            r["lidar"], z["lidar"], r["lidar_cap"], z["lidar_cap"], metrics["lidar_samples"],
            metrics["lidar_views"],
        )  # fmt: skip
    if f"r[d0:]_{split}" in metrics:
        head, tail = metrics[f"r[:d0]_{split}"], metrics[f"r[d0:]_{split}"]
        logger.info(
            # "\\[": Kedro's console log renders rich markup, where "[d0:]" reads as a tag.
            "spectrum: directclr r[:d0] collapsed %d of %d, r\\[d0:] collapsed %d of %d (%s)",
            head["collapsed_dimensions"], head["dimensions"], tail["collapsed_dimensions"],
            tail["dimensions"], split,
        )  # fmt: skip
    return table, metrics, figure, history_figure
