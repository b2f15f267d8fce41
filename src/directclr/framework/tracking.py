"""Every ``kedro run`` tracked in MLflow, with kedro-mlflow.

Two hooks, registered in ``settings.py`` (kedro-mlflow's own auto-registered hook is
disabled there, so that this module decides, per Kedro context, whether anything is
tracked):

* :class:`ProjectMlflowHook` is kedro-mlflow's hook, switched by ``DIRECTCLR_TRACKING``
  (:func:`~directclr.framework.environment.tracking_enabled`; off, it opens no store at all)
  and defaulting to a SQLite store ``mlflow.db`` in the project. It starts one MLflow run per
  ``kedro run`` (the *parent*) and logs the parameters the nodes read, flattened.
* :class:`TrackRuns` gives every model of the run (a namespace: ``directclr``,
  ``compare.simclr.seed_0``) its own *child* run: the merged settings as params, the training
  history live (through the ``<run>.tracking`` input of the pretraining node), the spectrum
  and linear-eval metrics under the comparison tables' names, the figures (the catalog's
  ``MlflowArtifactDataset`` entries, pointed at the right run here), and tags for the git
  commit, the dataset's content hash and the catalog version the artifacts were saved under.

kedro-mlflow is used through its public surface; the one exception lives in
:mod:`~directclr.framework.mlflow_adapter`. The pipelines are imported by the hooks when a
run starts, not with this module, which ``settings.py`` imports for every Kedro command.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
    parse_dataset_definition,
)
from kedro_mlflow.framework.hooks import MlflowHook
from kedro_mlflow.io.artifacts import MlflowArtifactDataset
from omegaconf import OmegaConf

from directclr.comparison import PAPER_COLUMN, comparison_row
from directclr.errors import CorruptFileError
from directclr.framework.environment import tracking_enabled
from directclr.framework.mlflow_adapter import set_version
from directclr.pipelines.sections import SETTINGS_SECTIONS
from directclr.tracking import (
    CHECKPOINT_TAG,
    NAMESPACE_TAG,
    RunRecorder,
    create_child,
    final_metrics,
    find_child,
    flatten,
    log_metrics,
    log_params,
)

logger = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# mlflow.yml names the artifact folder as ${project_uri:mlartifacts}: a file URI inside the
# project, made absolute here (kedro-mlflow would otherwise convert the relative path itself,
# logging that a relative "tracking_uri" was converted, which it is not).
PROJECT_URI_RESOLVER = "project_uri"


def parent_run_name(run_params: dict, catalog) -> str:
    """A ``kedro run``'s MLflow name: its pipelines, and for a comparison its seeds
    (``compare seeds 0, 1, 2``)."""
    from directclr.pipeline_registry import COMPARISONS

    names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
    if isinstance(names, str):
        names = [names]
    parts = []
    for name in names:
        seeds = None
        if name in COMPARISONS and catalog.exists(f"params:{name}"):
            seeds = (catalog.load(f"params:{name}") or {}).get("seeds")
        parts.append(f"{name} seeds {', '.join(map(str, seeds))}" if seeds else name)
    return " + ".join(parts)


def default_store(project_path: str | os.PathLike) -> str:
    """The tracking store when neither mlflow.yml nor ``MLFLOW_TRACKING_URI`` names one: a
    SQLite database in the project folder (no server to start)."""
    return f"sqlite:///{Path(project_path).resolve() / STORE_FILE}"


def check_store(path: Path) -> None:
    """Refuse a damaged SQLite store before MLflow opens it: MLflow would fail deep inside
    with a raw SQLite error, or, for garbled pages it does not read at once, track this run
    into the damaged store without a word. SQLite's ``quick_check`` reads every page once
    (cheap beside a run); a store that does not exist yet is MLflow's to create."""
    if not path.exists():
        return
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as store:
            found = [str(row[0]) for row in store.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as err:
        found = [str(err)]
    if found != ["ok"]:
        raise CorruptFileError(
            f"the MLflow store {path} ({STORE_FILE}) is damaged: {'; '.join(found[:3])}. "
            f"Move it aside (mv {path} {path}.damaged; the next run starts a new store) or "
            f"run without tracking (DIRECTCLR_TRACKING=off), then run again"
        )


def _mlflow_yml_store(context) -> str | None:
    """The store ``mlflow.yml`` names (``server.mlflow_tracking_uri``), read as kedro-mlflow
    reads it; None: the default store."""
    loader = context.config_loader
    loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
    try:
        conf = loader["mlflow"]
    except MissingConfigException:
        return None
    return ((conf or {}).get("server") or {}).get("mlflow_tracking_uri")


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook, on only when tracking is (decided per Kedro context)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False

    @hook_impl
    def after_context_created(self, context) -> None:
        project = Path(context.project_path)
        OmegaConf.register_new_resolver(
            PROJECT_URI_RESOLVER, lambda path: (project / path).resolve().as_uri(), replace=True
        )
        self.enabled = tracking_enabled()
        self.run_id = None
        if not self.enabled:
            return
        # kedro-mlflow falls back to MLFLOW_TRACKING_URI, then to a file store; this
        # project's fallback is the SQLite store. Set only while the hook reads it.
        given = os.environ.get("MLFLOW_TRACKING_URI")
        if given is None and _mlflow_yml_store(context) is None:
            check_store(Path(context.project_path) / STORE_FILE)
            os.environ["MLFLOW_TRACKING_URI"] = default_store(context.project_path)
        try:
            super().after_context_created(context)
        finally:
            if given is None:
                del os.environ["MLFLOW_TRACKING_URI"]

    @hook_impl
    def after_catalog_created(self) -> None:
        """kedro-mlflow names its metric datasets here, materialising every catalog entry; the
        project uses none of them (the tracking hook logs metrics), so nothing to do."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self.enabled:
            super().before_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        if not self.enabled:
            return
        # A run's validated training settings arrive as an object: log them flattened,
        # as the YAML reads (pretraining.lr), not as one long string.
        inputs = {name: _plain(value) for name, value in inputs.items()}
        super().before_node_run(node, catalog, inputs, is_async)

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self.enabled:
            super().after_pipeline_run(run_params, pipeline, catalog)
            self._close_reopened()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if self.enabled:
            super().on_pipeline_error(error, run_params, pipeline, catalog)
            self._close_reopened()

    def _close_reopened(self) -> None:
        """kedro-mlflow reopens its run before every node, and MLflow stacks the same run
        again each time; it ends one. Unstack the rest, or the next run of this process (a
        notebook, the tests) would take the old run for an orchestrator's and log into it."""
        import mlflow

        while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
            mlflow.end_run()


class TrackedArtifactDataset(MlflowArtifactDataset):
    """kedro-mlflow's ``MlflowArtifactDataset``, versioned by the catalog; with tracking off
    (:func:`~directclr.framework.environment.tracking_enabled`), the dataset it wraps, alone:
    nothing is logged and no MLflow store is made.

    ``versioned: true`` goes on this entry, not on the wrapped ``dataset``: Kedro then hands
    the run's one save version (and any ``--load-versions``) to the wrapped dataset. A
    wrapped dataset versioned by itself would take a save version of its own, which Kedro's
    catalog refuses ("All datasets in the catalog must have the same save version").
    """

    def __new__(
        cls,
        dataset: str | dict,
        run_id: str | None = None,
        artifact_path: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        version: Version | None = None,
    ):
        if not tracking_enabled():
            dataset_class, args = parse_dataset_definition(dataset)
            _check_versionable(dataset_class, version)
            plain = dataset_class(**args, **({} if version is None else {"version": version}))
            plain.metadata = metadata
            return plain
        wrapped = MlflowArtifactDataset(dataset, run_id, artifact_path, credentials, metadata)
        _check_versionable(type(wrapped), version)
        if version is not None:
            set_version(wrapped, version)  # kedro-mlflow builds it without one
        return wrapped


def _check_versionable(dataset_class: type, version: Version | None) -> None:
    if version is not None and not issubclass(dataset_class, AbstractVersionedDataset):
        raise DatasetError(
            f"versioned: true, but {dataset_class.__name__} cannot be versioned; drop "
            f"versioned from the entry"
        )


class TrackedRunsDataset(AbstractDataset[None, pd.DataFrame]):
    """Read-only: every finished model run in the MLflow experiment, one row each (its
    namespace, run id, start time, checkpoint key, training settings ``method``, ``seed``,
    ``temperature``, and its final metrics under the comparison tables' names), newest
    first. Loads None when tracking is off. ``selection`` reads it to rank runs of every
    ``kedro run`` so far, not only the latest comparison's."""

    def __init__(self, experiment: str = "directclr", metadata: dict | None = None) -> None:
        self._experiment = experiment
        self.metadata = metadata

    def load(self) -> pd.DataFrame | None:
        if not tracking_enabled():
            return None
        import mlflow
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
        experiment = client.get_experiment_by_name(self._experiment)
        if experiment is None:
            return pd.DataFrame()
        query = f"tags.`{NAMESPACE_TAG}` LIKE '%' and attributes.status = 'FINISHED'"
        rows, token = [], None
        while True:
            page = client.search_runs([experiment.experiment_id], query, max_results=1000,
                                      order_by=["attributes.start_time DESC"],
                                      page_token=token)  # fmt: skip
            for run in page:
                params = run.data.params
                rows.append({
                    "namespace": run.data.tags[NAMESPACE_TAG],
                    "mlflow_run_id": run.info.run_id,
                    "start_time": run.info.start_time,
                    "checkpoint_key": run.data.tags.get(CHECKPOINT_TAG, ""),
                    "method": params.get("pretraining.method"),
                    "seed": _number(params.get("pretraining.seed")),
                    "temperature": _number(params.get("pretraining.temperature")),
                    **run.data.metrics,
                })  # fmt: skip
            token = page.token
            if not token:
                break
        return pd.DataFrame(rows)

    def save(self, data: pd.DataFrame) -> None:
        raise DatasetError("TrackedRunsDataset is read-only: runs are written by tracking")

    def _describe(self) -> dict[str, Any]:
        return {"experiment": self._experiment}


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def recorded_sections(space: str) -> list[str]:
    """The settings sections a model's run records besides its training settings: the
    prepared data's, those every run's stages share, and the run's own section where it has
    one (``analyze``: the imported encoder's)."""
    from directclr.pipeline_registry import DATA_PREP, SHARED_SECTIONS

    read = {DATA_PREP, *SHARED_SECTIONS, space}
    sections = (name.partition(".")[0] for name in SETTINGS_SECTIONS)
    return [section for section in dict.fromkeys(sections) if section in read]


def git_commit(path: str | os.PathLike) -> dict[str, str]:
    """The project's git commit, and whether the work tree differs from it (none outside
    git)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "directclr.git_dirty": str(bool(dirty))}


def _plain(settings: Any) -> Any:
    """Settings as the YAML reads them: typed sections (pydantic models) as dicts."""
    dump = getattr(settings, "model_dump", None)
    return dump(mode="json") if dump else settings


class TrackRuns:
    """One MLflow child run per model of a ``kedro run``, under kedro-mlflow's run."""

    def __init__(self, mlflow_hook: ProjectMlflowHook) -> None:
        self._mlflow = mlflow_hook
        self._project: Path | None = None
        self._children: dict[str, str] = {}
        self._tags: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self._mlflow.enabled

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)

    # kedro-mlflow's run must be open first: pluggy calls later-registered hooks first, and
    # trylast puts this one after every other.
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._children = {}
        if not self.enabled:
            return
        self._uri = self._mlflow.mlflow_config.server.mlflow_tracking_uri
        self._parent = self._mlflow.run_id
        client = self._client()
        # The children go into the experiment kedro-mlflow opened the parent in.
        self._experiment = client.get_run(self._parent).info.experiment_id
        self._tags = {
            **git_commit(self._project),
            "directclr.catalog_version": str(run_params.get("run_id")),
        }
        if run_params.get("load_versions"):
            loaded = ",".join(f"{k}:{v}" for k, v in run_params["load_versions"].items())
            self._tags["directclr.load_versions"] = loaded
        if catalog.exists("dataset_card"):
            self._tags["directclr.dataset_content_hash"] = catalog.load("dataset_card").get(
                "content_hash", ""
            )
        for name, value in self._tags.items():
            client.set_tag(self._parent, name, value)
        # These are model-training runs, not a GenAI app's traces: say so to MLflow 3's UI
        # (a new browser still starts in its GenAI mode; the README's link asks for the
        # model-training view, which the browser then remembers).
        client.set_experiment_tag(self._experiment, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        client.update_run(self._parent, name=parent_run_name(run_params, catalog))

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any]) -> dict | None:
        from directclr.pipeline_registry import is_node, model_namespace
        from directclr.pipelines.pretraining import PRETRAIN_NODE

        space = model_namespace(node.name)
        if not self.enabled or space is None:
            return None
        if is_node(node.name, PRETRAIN_NODE):
            recorder = RunRecorder(
                self._uri, self._experiment, self._parent, space,
                self._params(space, catalog), self._tags,
            )  # fmt: skip
            return {f"{space}.tracking": recorder}
        self._child(space, catalog)
        return None

    @hook_impl
    def after_node_run(
        self, node, catalog, inputs: dict[str, Any], outputs: dict[str, Any]
    ) -> None:
        from directclr.pipeline_registry import is_node, model_namespace
        from directclr.pipelines.data_prep import PREPARE_NODE
        from directclr.pipelines.linear_eval import PROBE_NODE
        from directclr.pipelines.pretraining import PRETRAIN_NODE

        if not self.enabled:
            return
        # Kedro saves a node's outputs after this hook: the run they belong to is known now.
        self._route_datasets(node, catalog)
        if is_node(node.name, PREPARE_NODE) and "dataset_card" in outputs:
            content = outputs["dataset_card"].get("content_hash", "")
            self._tags["directclr.dataset_content_hash"] = content
            self._client().set_tag(self._parent, "directclr.dataset_content_hash", content)
        space = model_namespace(node.name)
        if space is None:
            return
        if is_node(node.name, PRETRAIN_NODE):
            recorder = inputs.get(f"{space}.tracking")
            found = getattr(recorder, "run_id", None)  # None when devices: N trained it
            self._children[space] = found or find_child(
                self._uri, self._experiment, space, self._parent
            )
        if is_node(node.name, PROBE_NODE):
            linear_eval = outputs[f"{space}.linear_eval_metrics"]
            spectrum = inputs[f"{space}.spectrum_metrics"]
            row = comparison_row(space, linear_eval, spectrum, pd.DataFrame())
            row.pop(PAPER_COLUMN)  # the paper's figure, not a measurement of this run
            # The headline first, the per-seed table's names, every spectrum measurement;
            # how they were measured as parameters.
            metrics, params = final_metrics(row, spectrum)
            log_metrics(self._uri, self._children[space], metrics)
            log_params(self._uri, self._children[space], params)
            # The model's last stage: its run ends now, so its duration is its own.
            self._client().set_terminated(self._children.pop(space), "FINISHED")

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._end_children("FINISHED")

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._end_children("FAILED")

    # -- helpers -------------------------------------------------------------------------

    def _route_datasets(self, node, catalog) -> None:
        """Point the node's MLflow datasets (those with a ``run_id``: the
        ``TrackedArtifactDataset`` entries) at its model's run, or at the parent run for
        outputs of no model."""
        from directclr.pipeline_registry import model_namespace

        space = model_namespace(node.name)
        for name in node.outputs:
            dataset = catalog.get(name)
            if hasattr(dataset, "run_id"):
                dataset.run_id = self._child(space, catalog) if space else self._parent

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self._uri)

    def _child(self, space: str, catalog) -> str:
        """This run's child for ``space``: made the first time one of its nodes runs."""
        if space not in self._children:
            found = find_child(self._uri, self._experiment, space, self._parent)
            self._children[space] = found or create_child(
                self._uri, self._experiment, self._parent, space,
                self._params(space, catalog), self._tags,
            )  # fmt: skip
        return self._children[space]

    def _params(self, space: str, catalog) -> dict[str, Any]:
        """A model's settings, flattened: its merged training settings (``pretraining.lr``)
        and the shared sections the other stages read."""
        names = {"pretraining": f"params:{space}.pretraining"}
        names |= {section: f"params:{section}" for section in recorded_sections(space)}
        sections = {
            section: _plain(catalog.load(name))
            for section, name in names.items()
            if name in catalog
        }
        return {**flatten(sections), "namespace": space}

    def _end_children(self, status: str) -> None:
        if not self.enabled:
            return
        client = self._client()
        for space, run_id in self._children.items():
            if run_id is None:
                continue
            try:
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, status)
            except Exception as error:  # noqa: BLE001 - the store may be what failed
                logger.warning("tracking: could not close the run of %s (%s)", space, error)
        self._children = {}
