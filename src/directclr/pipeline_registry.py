"""Project pipelines.

A *run* is the four model stages (pretraining, embeddings, spectrum, linear_eval) of one
method, under a Kedro namespace named after the run: its datasets are ``<run>.model``,
``<run>.embeddings``, ... and its own training settings ``<run>.pretraining``, laid over
the shared ``pretraining`` recipe. Every run shares the prepared ``dataset`` and the
analysis parameters. Each stage is also a namespace of its own inside the run, so kedro-viz
draws the five stages as groups.

Comparisons (``compare``, ``projector_ablation``, ``d0_sweep``, ``sweep``) run several such
runs side by side, each once per seed of the comparison's ``seeds``: one namespace per run
and seed (``compare.simclr.seed_0``), so every seed keeps its own versioned artifacts and
checkpoint and ``--namespaces`` can redo one. The run named ``random_init`` is the control:
the same stages, with a model that never trained in place of pretraining. Runs and seeds are
read from the parameters (conf/base/parameters_compare.yml), so adding a run there adds
namespaces with no code change.

``selection`` reads the finished runs of the comparisons that ``selection.comparisons``
lists (their latest per-seed tables) and asks which label-free metric predicts accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kedro.framework.project import settings
from kedro.pipeline import Pipeline

from directclr.comparison import CONTROL, seed_namespace
from directclr.pipelines import (
    analyze,
    comparison,
    data_prep,
    embeddings,
    linear_eval,
    pretraining,
    random_init,
    selection,
    spectrum,
    toy_implicit_regularization,
    toy_strong_augmentation,
)
from directclr.pipelines.sections import SETTINGS_SECTIONS

DATA_PREP = "data_prep"
# The stages that measure a model, whatever made it: every run ends with them.
MEASURE_STAGES = {
    "embeddings": embeddings.create_pipeline,
    "spectrum": spectrum.create_pipeline,
    "linear_eval": linear_eval.create_pipeline,
}
# A run's stages: a method's model is trained by pretraining; the control's (random_init) is
# never trained; an imported encoder's (analyze) comes from a checkpoint.
MODEL_STAGES = {"pretraining": pretraining.create_pipeline, **MEASURE_STAGES}
CONTROL_STAGES = {"random_init": random_init.create_pipeline, **MEASURE_STAGES}
ANALYZE_STAGES = {"import_encoder": analyze.create_pipeline, **MEASURE_STAGES}
SHARED_INPUTS = {"dataset", "dataset_card"}
# The settings every run reads in common: those of the stages that measure a model. A run's
# training settings are its own (``<run>.pretraining`` laid over the shared recipe).
SHARED_SECTIONS = tuple(stage for stage in MEASURE_STAGES if stage in SETTINGS_SECTIONS)
COMPARISONS = ("compare", "projector_ablation", "d0_sweep", "sweep")
# Keys of a comparison's parameters that are not runs.
COMPARISON_SETTINGS = ("seeds", "reference")
# Every stage a run's nodes sit in: their names are ``<run>.<stage>.<node>``.
RUN_STAGES = frozenset({*MODEL_STAGES, *CONTROL_STAGES, *ANALYZE_STAGES})


def is_node(node_name: str, name: str) -> bool:
    """Whether ``node_name`` names the node a pipeline module named ``name`` (its exported
    constant, such as ``PRETRAIN_NODE``), in whatever namespaces this registry put it in:
    ``compare.simclr.seed_0.pretraining.pretrain_model`` is a ``pretrain_model`` node."""
    return node_name == name or node_name.endswith(f".{name}")


def model_namespace(node_name: str) -> str | None:
    """The run (namespace) a node belongs to: ``compare.simclr.seed_0`` for
    ``compare.simclr.seed_0.spectrum.compute_spectrum``; None for nodes of no run."""
    parts = node_name.split(".")
    if len(parts) >= 3 and parts[-2] in RUN_STAGES:
        return ".".join(parts[:-2])
    return None


def run_pipeline(run: str, stages: dict[str, Callable[[], Pipeline]] = MODEL_STAGES) -> Pipeline:
    """The model stages of one run (``stages``, by default all four), namespaced as ``run``,
    reading the shared dataset and those shared parameters that the stages use."""
    pipe = Pipeline(
        [
            Pipeline(create(), namespace=stage, prefix_datasets_with_namespace=False)
            for stage, create in stages.items()
        ]
    )
    free = pipe.inputs()
    shared = {f"params:{s}" for s in SHARED_SECTIONS} & free
    return Pipeline(pipe, namespace=run, inputs=SHARED_INPUTS & free, parameters=shared)


def data_prep_pipeline() -> Pipeline:
    return Pipeline(data_prep.create_pipeline(), namespace=DATA_PREP,
                    prefix_datasets_with_namespace=False)  # fmt: skip


def method_pipeline(run: str) -> Pipeline:
    """All five stages for one run: data_prep, then the run's model stages."""
    return data_prep_pipeline() + run_pipeline(run)


def comparison_pipeline(name: str, runs: list[str], seeds: list[int]) -> Pipeline:
    """data_prep once, every run of the comparison with every seed, then the report."""
    namespaces = {run: [seed_namespace(name, run, seed) for seed in seeds] for run in runs}
    pipe = data_prep_pipeline()
    for run, spaces in namespaces.items():
        for space in spaces:
            pipe += run_pipeline(space, CONTROL_STAGES if run == CONTROL else MODEL_STAGES)
    return pipe + comparison.create_pipeline(name, namespaces)


def comparison_layout(params: dict) -> dict[str, tuple[list[str], list[int]]]:
    """Each configured comparison's runs (in order) and seeds (duplicates dropped; the
    project's hook refuses a duplicated or empty list before any work)."""
    layout = {}
    for name in COMPARISONS:
        entries = params.get(name) or {}
        if not entries:
            continue
        runs = [run for run in entries if run not in COMPARISON_SETTINGS]
        seeds = [int(seed) for seed in dict.fromkeys(entries.get("seeds") or [0])]
        layout[name] = (runs, seeds)
    return layout


def configured_comparisons(conf_source: Path | None = None) -> dict[str, list[str]]:
    """The runs of each comparison, as configured in the project's parameters of the
    environment named by ``KEDRO_ENV`` (Kedro registers pipelines before it knows a run's
    ``--env``; a run whose ``--env`` lists other runs is stopped by the project's hook)."""
    return {name: runs for name, (runs, _) in _configured_layout(conf_source).items()}


def _configured_layout(conf_source: Path | None = None) -> dict[str, tuple[list[str], list[int]]]:
    return comparison_layout(_configured_parameters(conf_source))


def _configured_parameters(conf_source: Path | None = None) -> dict:
    source = conf_source or Path.cwd() / settings.CONF_SOURCE
    if not source.is_dir():
        return {}
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(source), env=os.environ.get("KEDRO_ENV"), **settings.CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def selection_comparisons(params: dict) -> list[str]:
    """The comparisons whose runs ``selection`` reads: ``selection.comparisons`` (default
    ``[sweep]``), duplicates dropped. Read when pipelines are registered; the project's hook
    stops a run whose parameters list others, or a comparison that has not run yet."""
    section = params.get("selection") or {}  # a run's parameters hold it as SelectionConfig
    default = ["sweep"]
    if isinstance(section, dict):
        listed = section.get("comparisons", default)
    else:
        listed = getattr(section, "comparisons", default)
    listed = [listed] if isinstance(listed, str) else list(listed or [])
    return [str(name) for name in dict.fromkeys(listed)]


def register_pipelines() -> dict[str, Pipeline]:
    """``directclr`` (the default) and ``simclr`` run all five stages; each stage alone is
    registered under its own name and runs for the default method; each configured
    comparison is registered under its name; ``analyze`` runs the analysis stages on an
    encoder imported from a checkpoint; ``selection`` ranks label-free metrics by how well
    they predict accuracy over the finished runs of ``selection.comparisons``."""
    pipelines = {
        "directclr": method_pipeline("directclr"),
        "simclr": method_pipeline("simclr"),
        "toy_strong_augmentation": toy_strong_augmentation.create_pipeline(),
        "toy_implicit_regularization": toy_implicit_regularization.create_pipeline(),
        "analyze": data_prep_pipeline() + run_pipeline("analyze", ANALYZE_STAGES),
    }
    default = pipelines["directclr"]
    pipelines[DATA_PREP] = data_prep_pipeline()
    for stage in MODEL_STAGES:
        pipelines[stage] = default.only_nodes_with_tags(stage)
    params = _configured_parameters()
    for name, (runs, seeds) in comparison_layout(params).items():
        pipelines[name] = comparison_pipeline(name, runs, seeds)
    pipelines["selection"] = selection.create_pipeline(selection_comparisons(params))
    pipelines["__default__"] = default
    return pipelines
