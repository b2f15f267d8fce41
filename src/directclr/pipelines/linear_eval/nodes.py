from __future__ import annotations

import logging

import matplotlib.pyplot as plt

from directclr.evaluation import LinearEvalConfig, evaluate_embeddings, evaluation_summary
from directclr.models import artifact_config
from directclr.plots import confusion_figure

logger = logging.getLogger(__name__)


def evaluate_linear_probe(
    embeddings: dict, model: dict, dataset: dict, spectrum_metrics: dict, params: LinearEvalConfig
) -> tuple[dict, plt.Figure]:
    """Linear probe and kNN on r; the same probe on z, on raw pixels and, for directclr,
    on r's two parts (:func:`directclr.evaluation.evaluate_embeddings`); with the effective
    ranks beside them and a confusion-matrix figure. The method and d0 come from the model
    artifact."""
    config = artifact_config(model)
    metrics, confusion = evaluate_embeddings(embeddings, dataset, config, spectrum_metrics, params)
    classes = dataset.get("classes") or [str(c) for c in range(confusion.shape[0])]
    title = f"linear probe on r: top-1 {metrics['linear_probe_accuracy_r']:.4f}"
    figure = confusion_figure(confusion, list(classes), title)
    # In a terminal Kedro's log renders rich markup, where "[d0:]" would read as a tag.
    logger.info(evaluation_summary(metrics), extra={"markup": False})
    return metrics, figure
