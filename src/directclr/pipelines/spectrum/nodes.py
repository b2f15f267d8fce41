from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from directclr.analysis import CONVENTION, embedding_spectrum, spectrum_metrics
from directclr.models import ModelConfig, artifact_config
from directclr.plots import spectrum_figure, spectrum_history_figure
from directclr.projectors import has_leading_subvector

logger = logging.getLogger(__name__)


class SpectrumConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gap_decades: float = Field(
        4.0,
        gt=0,
        description="an eigenvalue this many powers of ten below the largest is collapsed",
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
    embeddings: dict, config: ModelConfig
) -> dict[tuple[str, str], torch.Tensor]:
    """r and z of both splits; for directclr also r[:, :d0] and r[:, d0:], its two parts."""
    vectors = {}
    for split in ("train", "test"):
        r = embeddings[f"{split}_r"]
        vectors["r", split] = r
        vectors["z", split] = embeddings[f"{split}_z"]
        if has_leading_subvector(config.method) and config.d0 < r.shape[1]:
            vectors["r[:d0]", split] = r[:, : config.d0]
            vectors["r[d0:]", split] = r[:, config.d0 :]
    return vectors


def compute_spectrum(
    embeddings: dict, model: dict, spectrum_history: pd.DataFrame, params: SpectrumConfig
) -> tuple[pd.DataFrame, dict, plt.Figure, plt.Figure]:
    """Spectra and collapse metrics of r and z (for directclr also of r[:, :d0] and r[:, d0:])
    on both splits, a figure of the test spectra and one of the spectrum over training."""
    config = artifact_config(model)
    tables, metrics, test_spectra = [], {}, {}
    for (name, split), x in vectors_to_analyse(embeddings, config).items():
        spectrum = embedding_spectrum(x)
        tables.append(spectrum.table().assign(vectors=name, split=split))
        metrics[f"{name}_{split}"] = spectrum_metrics(
            spectrum, params.gap_decades, params.power_law_range, params.top_k
        )
        if split == "test":
            test_spectra[f"{name} ({spectrum.eigenvalues.size}-d)"] = spectrum.eigenvalues
    metrics.update(
        convention=CONVENTION,
        method=config.method,
        d0=config.d0,
        gap_decades=params.gap_decades,
        power_law_range=list(params.power_law_range),
        top_k=params.top_k,
    )
    columns = ["vectors", "split", "index", "eigenvalue", "log10_eigenvalue", "singular_value",
               "uncentred_eigenvalue"]  # fmt: skip
    table = pd.concat(tables, ignore_index=True)[columns]
    n_test = len(embeddings["test_r"])
    figure = spectrum_figure(
        test_spectra,
        f"{config.method}: embedding spectrum (test)",
        rank_limit=n_test - 1 if n_test <= metrics["r_test"]["dimensions"] else None,
    )
    history_figure = spectrum_history_figure(
        spectrum_history, "spectrum over training (fixed probe batch)", time="epoch"
    )
    r, z = metrics["r_test"], metrics["z_test"]
    logger.info(
        "spectrum: embeddings -> spectra (test: effective rank r %.1f of %d, z %.1f of %d; "
        "collapsed r %d, z %d; RankMe r %.1f)",
        r["effective_rank"], r["dimensions"], z["effective_rank"], z["dimensions"],
        r["collapsed_dimensions"], z["collapsed_dimensions"], r["rankme"],
    )  # fmt: skip
    if "r[d0:]_test" in metrics:
        logger.info(
            "spectrum: directclr r[:d0] collapsed %d of %d, r[d0:] collapsed %d of %d (test)",
            metrics["r[:d0]_test"]["collapsed_dimensions"], metrics["r[:d0]_test"]["dimensions"],
            metrics["r[d0:]_test"]["collapsed_dimensions"], metrics["r[d0:]_test"]["dimensions"],
        )  # fmt: skip
    return table, metrics, figure, history_figure
