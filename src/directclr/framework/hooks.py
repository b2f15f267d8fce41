"""Project hooks: stop a bad run before any node runs or any artifact is written; under
torchrun, let only rank 0 write artifacts.

The pipelines are imported by the hooks when a run starts, not with this module, which
``settings.py`` imports for every Kedro command.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.framework.hooks import hook_impl

from directclr.comparison import split_seed_namespace
from directclr.errors import BadSettingError
from directclr.framework.parameters import (
    catalog_text,
    check_comparison_settings,
    check_known_settings,
    check_runs_fit_data,
    known_settings,
    run_settings_of,
    runs_in,
)


class CheckRunBeforeWork:
    """Everything that can be known to be wrong before a node runs stops ``kedro run`` there,
    naming the setting to change:

    * a ``--params`` key that names no setting (with the closest valid names);
    * a ``--load-versions`` version that does not exist (listing those that do);
    * a comparison whose runs in this environment differ from the registered pipeline's;
    * every run's training settings: the shared ``pretraining`` recipe with the run's own
      ``<run>.pretraining`` laid over it, merged and validated here, once. The node then
      receives the validated settings as ``params:<run>.pretraining``;
    * runs that do not fit the data: checked against the existing dataset card, or, when
      data_prep is in the run, against the card it just made, before it is saved;
    * ``selection`` reading a comparison that is not configured or has never run;
    * a folder the run writes to (an output's, a checkpoint folder) that cannot be written.
    """

    def __init__(self) -> None:
        self._settings: dict[str, Any] = {}
        self._params: dict[str, Any] = {}
        self._knn = False
        self._spectrum = False
        # The parameter files' settings and the catalog's text, read with the context; the
        # settings a --params key may name are derived from them when a run is checked.
        self._files: tuple[dict[str, Any], str] | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._files = None
        loader = context.config_loader
        if not isinstance(loader, OmegaConfigLoader):
            return
        from_files = type(loader)(  # the project's loader names a misread file
            conf_source=loader.conf_source,
            env=loader.env,
            base_env=loader.base_env,
            default_run_env=loader.default_run_env,
            config_patterns=loader.config_patterns,
            merge_strategy=loader.merge_strategy,
        )
        envs = [loader.base_env, loader.env or loader.default_run_env]
        self._files = (from_files["parameters"], catalog_text(loader.conf_source, envs))

    # First of every hook: a refused run opens no MLflow run.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        from directclr.pipeline_registry import is_node
        from directclr.pipelines.data_prep import PREPARE_NODE
        from directclr.pipelines.linear_eval import PROBE_NODE
        from directclr.pipelines.spectrum import SPECTRUM_NODE

        params = catalog.load("parameters")
        if self._files is not None:
            known = known_settings(*self._files)
            check_known_settings(run_params.get("runtime_params") or {}, known)
        _check_load_versions(run_params.get("load_versions") or {}, catalog)
        _check_comparisons(pipeline, params, run_params.get("env"))
        check_comparison_settings(params, _comparisons_in(pipeline))
        _check_selection(pipeline, params, catalog, run_params.get("env"))
        _check_outputs_writable(pipeline, catalog)

        self._params = params
        self._settings = run_settings_of(params, runs_in(pipeline))
        for run, settings in self._settings.items():
            name = f"params:{run}.pretraining"
            if name in catalog:
                catalog.save(name, settings)
            else:  # a seed namespace's, when the catalog was not made by ProjectContext
                catalog[name] = settings
        names = {node.name for node in pipeline.nodes}
        self._knn = any(is_node(name, PROBE_NODE) for name in names)
        self._spectrum = any(is_node(name, SPECTRUM_NODE) for name in names)
        # With --only-missing-outputs Kedro skips a data_prep whose outputs exist: check the
        # saved card then, as after_node_run will not be called.
        prepares = any(is_node(name, PREPARE_NODE) for name in names)
        prepares = prepares and not run_params.get("only_missing_outputs")
        checks_data = not prepares and (self._settings or self._knn or self._spectrum)
        if checks_data and "dataset_card" in catalog and catalog.exists("dataset_card"):
            card = catalog.load("dataset_card")
            check_runs_fit_data(card, self._settings, params, self._knn, self._spectrum)

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        from directclr.pipeline_registry import is_node
        from directclr.pipelines.data_prep import PREPARE_NODE

        # Kedro saves a node's outputs after this hook: a refused card is never written.
        if is_node(node.name, PREPARE_NODE):
            card = outputs["dataset_card"]
            check_runs_fit_data(card, self._settings, self._params, self._knn, self._spectrum)


def _check_load_versions(load_versions: dict[str, str], catalog) -> None:
    """A pinned version that does not exist stops the run, listing the versions that do."""
    for name, version in load_versions.items():
        if name not in catalog:
            raise BadSettingError(
                f"--load-versions names {name!r}, which is not a catalog entry; use one of the "
                f"datasets `kedro catalog list` shows"
            )
        filepath = getattr(catalog.get(name), "_filepath", None)
        if filepath is None:
            continue
        folder = Path(str(filepath))
        if (folder / version / folder.name).exists():
            continue
        existing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        listing = ", ".join(existing[-10:]) if existing else "none: run the stage that writes it"
        raise BadSettingError(
            f"--load-versions {name}:{version}: there is no such version of {name} "
            f"({folder}); its versions are: {listing}"
        )


def _check_comparisons(pipeline, params: dict[str, Any], env: str | None) -> None:
    """The registry reads the comparisons' runs with KEDRO_ENV; ``kedro run --env=X`` does not
    reach it. A comparison whose runs in this run's parameters differ from the registered
    pipeline's stops the run, saying how to get the pipeline these parameters describe."""
    from kedro.framework.project import pipelines

    from directclr.pipeline_registry import comparison_layout

    layout = comparison_layout(params)
    for comparison in _comparisons_in(pipeline):
        namespaces = runs_in(pipelines[comparison])
        registered = sorted({run.split(".")[1] for run in namespaces})
        runs, seeds = layout.get(comparison) or ([], [])
        if sorted(runs) != registered:
            raise BadSettingError(
                f"the {comparison} pipeline was registered with runs {registered}, but the "
                f"parameters of environment {env!r} list {sorted(runs)}: pipelines are "
                f"registered before --env is known. Run with the environment variable "
                f"KEDRO_ENV={env} instead of --env={env}"
            )
        registered_seeds = sorted({split_seed_namespace(run)[1] for run in namespaces})
        given = (params.get(comparison) or {}).get("seeds")
        valid = isinstance(given, list) and given and len(set(map(str, given))) == len(given)
        # An empty or repeated list is check_comparison_settings' to report, as given.
        if valid and sorted(seeds) != registered_seeds:
            fix = (
                f"run with the environment variable KEDRO_ENV={env} instead of --env={env}"
                if env not in (None, "local", os.environ.get("KEDRO_ENV"))
                else f"change {comparison}.seeds in the parameter files, not with --params"
            )
            raise BadSettingError(
                f"{comparison}.seeds={given}, but the {comparison} pipeline was registered "
                f"with seeds {registered_seeds}: one namespace per seed is made when pipelines "
                f"are registered, from the parameter files of KEDRO_ENV, before --params and "
                f"--env are read; {fix}"
            )


def _check_selection(pipeline, params: dict[str, Any], catalog, env: str | None) -> None:
    """``selection`` reads the per-seed tables of the comparisons it was registered with. Stop
    it when its parameters list other comparisons (registered before --params and --env are
    read), when one is not a configured comparison, or when one has never run (and does not
    run in this run), saying which pipeline to run first."""
    from directclr.pipeline_registry import comparison_layout, is_node, selection_comparisons
    from directclr.pipelines.selection.pipeline import GATHER_NODE

    gather = next((node for node in pipeline.nodes if is_node(node.name, GATHER_NODE)), None)
    if gather is None:
        return
    suffix = ".per_seed_table"
    registered = [name.removesuffix(suffix) for name in gather.inputs if name.endswith(suffix)]
    listed = selection_comparisons(params)
    if listed != registered:
        raise BadSettingError(
            f"selection.comparisons={listed}, but the selection pipeline was registered with "
            f"{registered}: its inputs are made when pipelines are registered, from the "
            f"parameter files of KEDRO_ENV; change selection.comparisons in "
            f"parameters_selection.yml (or use KEDRO_ENV={env} instead of --env), not --params"
        )
    if not listed:
        raise BadSettingError("selection.comparisons is empty: list the comparisons to read, e.g. "
                         "[sweep]")  # fmt: skip
    configured = comparison_layout(params)
    unknown = [name for name in listed if name not in configured]
    if unknown:
        raise BadSettingError(
            f"selection.comparisons lists {', '.join(unknown)}, which is not a configured "
            f"comparison; choose from {', '.join(configured) or 'none'} (parameters_compare.yml)"
        )
    free = pipeline.inputs()
    for name in listed:
        table = f"{name}{suffix}"
        if table in free and not catalog.exists(table):
            raise BadSettingError(
                f"selection reads the finished runs of {name}, but {name} has never run: there "
                f"is no {table} (data/08_reporting/{name}/per_seed_table.csv). Run "
                f"`kedro run --pipeline={name}` first, then `kedro run --pipeline=selection`"
            )


def _output_folder(dataset) -> Path | None:
    """The local folder a dataset writes into: a versioned file's folder of versions, a
    checkpoint folder itself, an unversioned file's parent; None for one not on local disk."""
    from kedro.io.core import AbstractVersionedDataset

    from directclr.framework.datasets import CheckpointDirectory

    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_protocol", "file") != "file":
        return None
    path = Path(str(filepath))
    versioned = isinstance(dataset, AbstractVersionedDataset) and dataset._version is not None
    return path if versioned or isinstance(dataset, CheckpointDirectory) else path.parent


def _check_outputs_writable(pipeline, catalog) -> None:
    """Every folder the run will write to (each output's, and each checkpoint folder) can be
    written, or created under its nearest existing folder: found before any node runs, not
    after training, when a failed save would lose the work."""
    from directclr.framework.datasets import CheckpointDirectory, UnwritableFolderError

    blocked: dict[Path, set[Path]] = {}  # an existing path that cannot be written under
    for name in pipeline.all_outputs() | pipeline.inputs():
        dataset = catalog.get(name) if name in catalog else None
        is_output = name in pipeline.all_outputs() or isinstance(dataset, CheckpointDirectory)
        folder = _output_folder(dataset) if dataset is not None and is_output else None
        if folder is None:
            continue
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            blocked.setdefault(existing, set()).add(folder)
    if blocked:
        problems = []
        for existing, folders in sorted(blocked.items()):
            what = "is a file, not a folder" if not existing.is_dir() else "is not writable"
            named = sorted(map(str, folders - {existing}))
            more = f" and {len(named) - 3} more" if len(named) > 3 else ""
            under = f", so {', '.join(named[:3])}{more} cannot be created" if named else ""
            problems.append(f"{existing} {what}{under}")
        raise UnwritableFolderError(
            "this run writes where it cannot, so it stops before computing anything: "
            + "; ".join(problems)
            + ". Make the folders writable (or move the files aside), then run again"
        )


def _comparisons_in(pipeline) -> list[str]:
    from directclr.pipeline_registry import COMPARISONS

    return sorted({run.partition(".")[0] for run in runs_in(pipeline)} & set(COMPARISONS))


def _skipped(node) -> Any:
    """A stand-in for ``node``'s function on a rank that does not compute it: every output
    is None (kept in memory by :class:`RankZeroWrites`, never written)."""
    outputs = node._outputs  # as the node was declared: None, a name, a list or a dict

    def skipped(*args: Any, **kwargs: Any) -> Any:
        if isinstance(outputs, dict):
            return dict.fromkeys(outputs)
        if isinstance(outputs, list | tuple):
            return [None] * len(outputs)
        return None

    skipped.__name__ = f"skipped_on_this_rank__{node.func.__name__}"
    return skipped


class RankZeroWrites:
    """Under ``torchrun`` every process runs the pipeline's pretraining nodes (each trains as
    one data-parallel job) and the nodes they need (data_prep); only rank 0 writes catalog
    outputs, and only rank 0 runs the nodes after pretraining (embeddings, spectrum,
    linear_eval, ...): on the other ranks their functions are replaced by ones that return
    None, through the node's ``func`` setter (Kedro's way for a hook to wrap a node's
    function). The other ranks keep what they would have saved in memory, for the nodes
    after it, and log only warnings."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            return
        from directclr.pipeline_registry import is_node
        from directclr.pipelines.pretraining import PRETRAIN_NODE

        trains = [n.name for n in pipeline.nodes if is_node(n.name, PRETRAIN_NODE)]
        needed = {n.name for n in pipeline.to_nodes(*trains).nodes} if trains else set()
        for node in pipeline.nodes:
            if node.name not in needed:
                node.func = _skipped(node)

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            return
        kept: dict[str, Any] = {}
        load_persisted = catalog.load

        def save(name: str, data: Any) -> None:
            kept[name] = data

        def load(name: str, version: str | None = None) -> Any:
            return kept[name] if name in kept else load_persisted(name, version)

        catalog.save, catalog.load = save, load
        for name in ("kedro", "directclr"):
            logging.getLogger(name).setLevel(logging.WARNING)
