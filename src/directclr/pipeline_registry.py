"""Project pipelines.

A *run* is the four model stages (pretraining, embeddings, spectrum, linear_eval) of one
method, under a Kedro namespace named after the run: its datasets are ``<run>.model``,
``<run>.embeddings``, ... and its training parameters ``<run>.pretraining``. Every run
shares the prepared ``dataset`` and the analysis parameters. Each stage is also a
namespace of its own inside the run, so kedro-viz draws the five stages as groups.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from directclr.pipelines import data_prep, embeddings, linear_eval, pretraining, spectrum

MODEL_STAGES = {
    "pretraining": pretraining.create_pipeline,
    "embeddings": embeddings.create_pipeline,
    "spectrum": spectrum.create_pipeline,
    "linear_eval": linear_eval.create_pipeline,
}
SHARED_INPUTS = {"dataset", "dataset_card"}
SHARED_PARAMETERS = {"params:embeddings", "params:spectrum", "params:linear_eval"}


def run_pipeline(run: str) -> Pipeline:
    """The model stages of one run, namespaced as ``run``, reading the shared dataset."""
    stages = Pipeline(
        [
            Pipeline(create(), namespace=stage, prefix_datasets_with_namespace=False)
            for stage, create in MODEL_STAGES.items()
        ]
    )
    return Pipeline(
        stages, namespace=run, inputs=SHARED_INPUTS, parameters=SHARED_PARAMETERS
    )


def data_prep_pipeline() -> Pipeline:
    return Pipeline(data_prep.create_pipeline(), namespace="data_prep",
                    prefix_datasets_with_namespace=False)  # fmt: skip


def method_pipeline(run: str) -> Pipeline:
    """All five stages for one run: data_prep, then the run's model stages."""
    return data_prep_pipeline() + run_pipeline(run)


def register_pipelines() -> dict[str, Pipeline]:
    """``directclr`` (the default) and ``simclr`` run all five stages; each stage alone is
    registered under its own name and runs for the default method."""
    pipelines = {
        "directclr": method_pipeline("directclr"),
        "simclr": method_pipeline("simclr"),
    }
    default = pipelines["directclr"]
    pipelines["data_prep"] = data_prep_pipeline()
    for stage in MODEL_STAGES:
        pipelines[stage] = default.only_nodes_with_tags(stage)
    pipelines["__default__"] = default
    return pipelines
