from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from directclr.evaluation import linear_probe

logger = logging.getLogger(__name__)


class LinearEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    C: float = Field(1.0, gt=0, description="inverse regularisation strength of the probe")
    max_iter: int = Field(2000, ge=1)


def evaluate_linear_probe(
    embeddings: dict, dataset: dict, spectrum_metrics: dict, params: LinearEvalConfig
) -> dict:
    """Probe accuracy on r, on z and on raw pixels, with the effective ranks beside them."""
    train_y, test_y = embeddings["train_labels"].numpy(), embeddings["test_labels"].numpy()

    def probe(train_x, test_x) -> float:
        return linear_probe(train_x, train_y, test_x, test_y, params.C, params.max_iter)

    metrics = {
        "linear_probe_accuracy_r": probe(embeddings["train_r"], embeddings["test_r"]),
        "linear_probe_accuracy_z": probe(embeddings["train_z"], embeddings["test_z"]),
        "linear_probe_accuracy_raw_pixels": probe(
            dataset["train_images"].float().numpy(), dataset["test_images"].float().numpy()
        ),
        "effective_rank_r": spectrum_metrics["r_test"]["effective_rank"],
        "effective_rank_z": spectrum_metrics["z_test"]["effective_rank"],
        "representation_dim": spectrum_metrics["r_test"]["dimensions"],
        "embedding_dim": spectrum_metrics["z_test"]["dimensions"],
        "probe": {"C": params.C, "max_iter": params.max_iter},
    }
    logger.info(
        "linear_eval: linear-probe test accuracy on r %.4f (z %.4f, raw pixels %.4f); "
        "effective rank of r %.1f of %d",
        metrics["linear_probe_accuracy_r"], metrics["linear_probe_accuracy_z"],
        metrics["linear_probe_accuracy_raw_pixels"], metrics["effective_rank_r"],
        metrics["representation_dim"],
    )  # fmt: skip
    return metrics
