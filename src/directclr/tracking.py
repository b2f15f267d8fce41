"""MLflow runs for trained models: one run per model, its settings as params, its training
history as metric histories logged while it trains.

The layout (see the README's "Tracking" section): every ``kedro run`` is one MLflow run (the
*parent*, started by kedro-mlflow, named for its pipeline and a comparison's seeds); every
model it trains or measures (a Kedro namespace: ``directclr``, ``compare.simclr.seed_0``,
...) is a *child* run of it (named ``simclr seed 0``), tagged :data:`PARENT_TAG`, so the
runs table lists the models of a comparison side by side, with their headline metrics.
A model whose training resumes from a checkpoint continues the MLflow run that training
started (found by the checkpoint's key), and that run moves under the new parent.

Nothing here imports Kedro: :class:`RunRecorder` holds only strings, so it travels to the
processes that ``devices: N`` starts, where rank 0 logs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from directclr.comparison import split_seed_namespace
from directclr.projectors import HEAD, TAIL

NAMESPACE_TAG = "directclr.namespace"
CHECKPOINT_TAG = "directclr.checkpoint_key"
# A model's run names the ``kedro run`` it belongs to in a tag of the project's own, not in
# MLflow's ``mlflow.parentRunId``: MLflow's UI folds nested runs under their parent, so a
# comparison's models would stay out of the runs table and the charts until every parent
# is expanded by hand. Each model is a top-level run; the table groups them by this tag.
PARENT_TAG = "directclr.parent_run"
PREVIOUS_PARENTS_TAG = "directclr.previous_parent_runs"
HISTORY = "history"  # the prefix of the training history's metrics
# Characters MLflow refuses in metric and param names, as this project's names use them.
NAME_REPLACEMENTS = {HEAD: "r_head", TAIL: "r_tail"}


# The numbers a reader looks for first, under short names that sort before every other
# metric (MLflow orders metric columns and charts by name): accuracy, then collapse. Values
# are the comparison tables' columns of the same run.
HEADLINE = {
    "accuracy/linear_r": "linear_probe_top1_r",
    "accuracy/linear_z": "linear_probe_top1_z",
    "accuracy/knn_r": "knn_top1_r",
    "accuracy/raw_pixels": "linear_probe_top1_raw_pixels",
    "collapse/collapsed_dims_r": "collapsed_dims_r",
    "collapse/collapsed_dims_z": "collapsed_dims_z",
    "collapse/effective_rank_r": "effective_rank_r",
    "collapse/effective_rank_z": "effective_rank_z",
    "collapse/rankme_r": "rankme_r",
    "collapse/rankme_z": "rankme_z",
    "collapse/lidar_r": "lidar_r",
    "collapse/lidar_z": "lidar_z",
}
# Columns of a comparison row that describe the run rather than measure it: parameters.
ROW_SETTINGS = ("d0", "dims_r", "dims_z", "spectrum_split", "method", "run", "seed")
# Entries of a vectors' spectrum metrics that say what was measured, not what came out.
SPECTRUM_SETTINGS = ("dimensions", "samples", "max_rank", "top_k", "normalised_std_uniform",
                     "power_law_ranks")  # fmt: skip


def run_name(namespace: str) -> str:
    """What a model's MLflow run is called: ``simclr seed 1`` for ``compare.simclr.seed_1``
    (the comparison is its parent's name), the namespace itself for a run of no seed."""
    found = split_seed_namespace(namespace)
    if found is None:
        return namespace
    head, seed = found
    return f"{head.partition('.')[2] or head} seed {seed}"


def final_metrics(row: dict[str, Any], spectrum: dict[str, Any]) -> tuple[dict, dict]:
    """A model's final numbers split into MLflow metrics and parameters: the headline
    (:data:`HEADLINE`), the comparison row's measurements under the per-seed table's names,
    and every spectrum measurement of every vectors entry (``spectrum.r_train.nesum``) are
    metrics; what the row and the spectrum record about how they measured (d0, dimensions,
    thresholds, LiDAR's settings) are parameters."""
    metrics = {name: row.get(column) for name, column in HEADLINE.items()}
    metrics |= {key: value for key, value in row.items() if key not in ROW_SETTINGS}
    params = {key: row[key] for key in ROW_SETTINGS if row.get(key) is not None}
    for key, value in spectrum.items():
        if isinstance(value, dict) and "effective_rank" in value:  # one vectors' spectrum
            for measure, number in value.items():
                target = params if measure in SPECTRUM_SETTINGS else metrics
                target[f"spectrum.{key}.{measure}"] = number
        else:
            params |= flatten(value, f"spectrum.{key}")
    return numeric(metrics), params


def metric_name(name: str) -> str:
    """A metric or param name MLflow accepts: r's two parts (:data:`~directclr.projectors.
    HEAD`, :data:`~directclr.projectors.TAIL`) are called ``r_head`` and ``r_tail`` (the
    comparison tables' names), and any other character
    outside letters, digits, ``_-. /`` becomes ``_``."""
    for old, new in NAME_REPLACEMENTS.items():
        name = name.replace(old, new)
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def flatten(values: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts as one level, keys joined with ``sep`` (``pretraining.augmentation.
    view1.crop_scale``); lists stay values."""
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        out.update(flatten(value, name, sep))
    return out


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among ``values`` (booleans and NaN left out), as floats."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log finite ``metrics`` at ``step`` in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(metric_name(k), v, now, step) for k, v in numeric(metrics).items()]
    client = _client(tracking_uri)
    for start in range(0, len(batch), 1000):  # MLflow's limit per request
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def log_params(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (values as text, cut to MLflow's 6000-character limit). A param the
    run already has is left as it is (MLflow refuses to change one: a resumed run keeps
    the values it started with)."""
    from mlflow.entities import Param

    client = _client(tracking_uri)
    logged = client.get_run(run_id).data.params
    batch = [
        Param(metric_name(k), str(v)[:6000])
        for k, v in params.items()
        if metric_name(k) not in logged
    ]
    for start in range(0, len(batch), 100):  # MLflow's limit per request
        client.log_batch(run_id, params=batch[start : start + 100])


def newest_run(tracking_uri: str, experiment_id: str, query: str):
    """The newest live run of the experiment that ``query`` (MLflow's search syntax) finds;
    None when there is none."""
    runs = _client(tracking_uri).search_runs(
        [experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def find_child(tracking_uri: str, experiment_id: str, namespace: str, parent: str | None):
    """The newest live run for ``namespace`` under ``parent`` (any parent when None)."""
    query = f"tags.`{NAMESPACE_TAG}` = '{namespace}'"
    if parent is not None:
        query += f" and tags.`{PARENT_TAG}` = '{parent}'"
    run = newest_run(tracking_uri, experiment_id, query)
    return run.info.run_id if run else None


def create_child(
    tracking_uri: str,
    experiment_id: str,
    parent: str,
    namespace: str,
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """A new child run of ``parent`` for ``namespace`` with ``params`` and ``tags``."""
    client = _client(tracking_uri)
    run = client.create_run(
        experiment_id,
        run_name=run_name(namespace),
        tags={PARENT_TAG: parent, NAMESPACE_TAG: namespace, **tags},
    )
    log_params(tracking_uri, run.info.run_id, params)
    return run.info.run_id


@dataclass
class RunRecorder:
    """Where one model's run is logged; handed to the training loop, which calls
    :meth:`start` once it knows whether it resumes and :meth:`record` with each epoch's row.

    Only strings inside, so it pickles into the processes of ``devices: N`` (rank 0 logs).
    """

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    namespace: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None

    def start(self, key: str, history: list[dict[str, Any]]) -> str:
        """Open the run: the unfinished run that trained checkpoint ``key`` when training
        resumes (``history`` non-empty) and one exists, else a new child run, which gets the
        rows already trained (``history``) so every run holds its whole history."""
        if history:
            query = f"tags.`{CHECKPOINT_TAG}` = '{key}' and attributes.status != 'FINISHED'"
            previous = newest_run(self.tracking_uri, self.experiment_id, query)
            if previous is not None:
                client = _client(self.tracking_uri)
                self.run_id = previous.info.run_id
                parents = previous.data.tags.get(PREVIOUS_PARENTS_TAG, "")
                old_parent = previous.data.tags.get(PARENT_TAG, "")
                client.update_run(self.run_id, status="RUNNING", name=run_name(self.namespace))
                client.set_tag(self.run_id, PARENT_TAG, self.parent_run_id)
                client.set_tag(self.run_id, NAMESPACE_TAG, self.namespace)
                earlier = ",".join(p for p in (parents, old_parent) if p)
                client.set_tag(self.run_id, PREVIOUS_PARENTS_TAG, earlier)
                return self.run_id
        self.run_id = create_child(
            self.tracking_uri, self.experiment_id, self.parent_run_id, self.namespace,
            self.params, {**self.tags, CHECKPOINT_TAG: key},
        )  # fmt: skip
        for row in history:
            self.record(row)
        return self.run_id

    def record(self, row: dict[str, Any]) -> None:
        """Log one epoch's row (its finite numbers) at step = epoch, as ``history/<column>``:
        the history's ranks are of a fixed probe batch, not the final spectrum's split, so
        they keep names of their own."""
        if self.run_id is None:
            raise RuntimeError("RunRecorder.record before start")
        metrics = {f"{HISTORY}/{k}": v for k, v in row.items() if k not in ("epoch", "step")}
        log_metrics(self.tracking_uri, self.run_id, metrics, step=int(row["epoch"]))
