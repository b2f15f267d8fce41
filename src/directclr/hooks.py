"""Project hooks: check every run's training settings before any node runs; under torchrun,
let only rank 0 write artifacts."""

from __future__ import annotations

import logging
import os
from typing import Any

from kedro.framework.hooks import hook_impl
from pydantic import ValidationError

PRETRAINING_NODE = "pretraining.pretrain_model"


def _lookup(params: dict, dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def validate_runs(params: dict, runs: list[str]) -> None:
    """Raise a ValueError naming the run and parameter if any run's settings are invalid."""
    from directclr.training import run_config  # torch loads only when a run is checked

    recipe = params.get("pretraining") or {}
    for run in runs:
        overrides = _lookup(params, f"{run}.pretraining")
        if overrides is None:
            raise ValueError(
                f"parameters {run}.pretraining are missing; add them to "
                f"conf/base/parameters_pretraining.yml or parameters_compare.yml"
            )
        try:
            run_config(recipe, overrides)
        except ValidationError as err:
            problems = "; ".join(
                f"{run}.pretraining.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                if e["loc"] else f"{run}.pretraining: {e['msg']}"
                for e in err.errors()
            )  # fmt: skip
            raise ValueError(
                f"invalid training parameters for run {run!r} (the pretraining recipe with "
                f"{run}.pretraining laid over it): {problems}"
            ) from None


class ValidateRunSettings:
    """Validates the merged training settings of every run in the pipeline, so a bad value
    stops ``kedro run`` before the first node, with the parameter's name."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        runs = sorted(
            node.name.removesuffix(f".{PRETRAINING_NODE}")
            for node in pipeline.nodes
            if node.name.endswith(f".{PRETRAINING_NODE}")
        )
        if runs:
            validate_runs(catalog.load("parameters"), runs)


class RankZeroWrites:
    """Under ``torchrun`` every process runs the whole pipeline (the pretraining node trains
    as one data-parallel job); only rank 0 writes catalog outputs. The other ranks keep
    what they would have saved in memory, for the nodes after it, and log only warnings."""

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
