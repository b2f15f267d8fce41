from __future__ import annotations

import logging

import matplotlib.pyplot as plt
from pydantic import BaseModel, ConfigDict, Field

from directclr.data import materialize
from directclr.evaluation import knn_accuracy, linear_probe
from directclr.models import artifact_config
from directclr.plots import confusion_figure
from directclr.projectors import has_leading_subvector

logger = logging.getLogger(__name__)


class LinearEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    C_grid: list[float] = Field(
        [0.01, 0.1, 1.0], min_length=1, description="inverse regularisation strengths to try"
    )
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    max_iter: int = Field(1000, ge=1)
    tol: float = Field(1e-4, gt=0)
    seed: int = 0
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    raw_pixels: bool = Field(True, description="also probe raw pixels, the no-pretraining floor")

    def model_post_init(self, __context) -> None:
        if any(c <= 0 for c in self.C_grid):
            raise ValueError(f"C_grid values must be positive, got {self.C_grid}")


def evaluate_linear_probe(
    embeddings: dict, model: dict, dataset: dict, spectrum_metrics: dict, params: LinearEvalConfig
) -> tuple[dict, plt.Figure]:
    """Linear probe and kNN on r; the same probe on z, on raw pixels and, for directclr,
    on r[:, :d0]; with the effective ranks beside them and a confusion-matrix figure. The
    method and d0 come from the model artifact."""
    config = artifact_config(model)
    split = spectrum_metrics["split"]
    train_y, test_y = embeddings["train_labels"].numpy(), embeddings["test_labels"].numpy()

    def probe(train_x, test_x):
        return linear_probe(
            train_x, train_y, test_x, test_y, tuple(params.C_grid), params.validation_fraction,
            params.max_iter, params.tol, params.seed,
        )  # fmt: skip

    on_r = probe(embeddings["train_r"], embeddings["test_r"])
    probes = {
        "r": on_r.as_dict(),
        "z": probe(embeddings["train_z"], embeddings["test_z"]).as_dict(),
    }
    if has_leading_subvector(config.method) and config.d0 < embeddings["train_r"].shape[1]:
        # DirectCLR's two parts: the one the loss sees, and the rest, trained only through
        # the last block's identity path.
        d0 = config.d0
        head = probe(embeddings["train_r"][:, :d0], embeddings["test_r"][:, :d0])
        tail = probe(embeddings["train_r"][:, d0:], embeddings["test_r"][:, d0:])
        probes["r[:d0]"], probes["r[d0:]"] = head.as_dict(), tail.as_dict()
    if params.raw_pixels:
        raw = probe(materialize(dataset, "train"), materialize(dataset, "test"))
        probes["raw_pixels"] = raw.as_dict()
    knn = knn_accuracy(embeddings["train_r"], train_y, embeddings["test_r"], test_y,
                       params.knn_k, params.knn_temperature)  # fmt: skip
    metrics = {
        "method": config.method,
        "d0": config.d0,
        "linear_probe_accuracy_r": on_r.top1,
        "linear_probe_accuracy_z": probes["z"]["top1"],
        "linear_probe_accuracy_raw_pixels": probes.get("raw_pixels", {}).get("top1"),
        "knn_accuracy_r": knn,
        "spectrum_split": split,
        "effective_rank_r": spectrum_metrics[f"r_{split}"]["effective_rank"],
        "effective_rank_z": spectrum_metrics[f"z_{split}"]["effective_rank"],
        "representation_dim": spectrum_metrics[f"r_{split}"]["dimensions"],
        "embedding_dim": spectrum_metrics[f"z_{split}"]["dimensions"],
        "probes": probes,
        "probe": params.model_dump(),
    }
    classes = dataset.get("classes") or [str(c) for c in range(on_r.confusion.shape[0])]
    figure = confusion_figure(on_r.confusion, list(classes),
                              f"linear probe on r: top-1 {on_r.top1:.4f}")  # fmt: skip
    extra = (
        # "\\[": Kedro's console log renders rich markup, where "[d0:]" would read as a tag.
        f", r[:d0] {probes['r[:d0]']['top1']:.4f}, r\\[d0:] {probes['r[d0:]']['top1']:.4f}"
        if "r[:d0]" in probes
        else ""
    )
    raw_text = f"{metrics['linear_probe_accuracy_raw_pixels']:.4f}" if params.raw_pixels else "-"
    logger.info(
        "linear_eval: linear-probe test accuracy on r %.4f (z %.4f%s, raw pixels %s; kNN %.4f); "
        "effective rank of r %.1f of %d (%s split)",
        on_r.top1, probes["z"]["top1"], extra, raw_text, knn, metrics["effective_rank_r"],
        metrics["representation_dim"], split,
    )  # fmt: skip
    return metrics, figure
