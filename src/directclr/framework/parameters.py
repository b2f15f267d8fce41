"""Checks of the project's Kedro parameters that can run before any node.

* every ``--params`` key names a known setting (a misspelled one would otherwise be ignored);
* every run's training settings, merged and validated once (:func:`run_settings_of`);
* the runs fit the prepared data: a batch, and the kNN probe's k, no larger than the
  training split (:func:`check_runs_fit_data`).

``settings.py`` imports this module for every Kedro command; the pipelines (and the
libraries their nodes load) are imported by the functions that need them, when a run is
checked.
"""

from __future__ import annotations

import re
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from directclr.comparison import lookup, split_seed_namespace
from directclr.pipelines.sections import SETTINGS_SECTIONS, settings_class

_RUNTIME_REFERENCE = re.compile(r"\$\{runtime_params:\s*([A-Za-z0-9_.]+)")


class UnknownSettingError(ValueError):
    """A ``--params`` key that names no setting of the project."""


def model_paths(model: type[BaseModel], prefix: str) -> set[str]:
    """Dotted paths of a settings model's fields, nested models included."""
    paths = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}"
        paths.add(path)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= model_paths(annotation, path)
    return paths


def _leaf_paths(params: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in params.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= _leaf_paths(value, f"{path}.")
    return paths


def known_settings(file_params: dict[str, Any], catalog_text: str = "") -> set[str]:
    """Every dotted setting a run accepts: those in the parameter files, every field of the
    typed sections, every training setting under the recipe and under each run's
    ``pretraining``, and the runtime parameters the catalog reads (``${runtime_params:x}``).
    The settings classes are imported here, when a run is checked, not with this module."""
    known = _leaf_paths(file_params)
    for section in SETTINGS_SECTIONS:
        known |= model_paths(settings_class(section), section)
    training = settings_class("pretraining")
    for path in list(known):
        if path.endswith(".pretraining"):
            known |= model_paths(training, path)
    known |= set(_RUNTIME_REFERENCE.findall(catalog_text))
    return known


def check_known_settings(runtime_params: dict[str, Any], known: set[str]) -> None:
    """Stop a run whose ``--params`` name a setting that does not exist, with the closest
    valid names; a key naming a whole section (a prefix of known settings) is accepted."""
    problems = []
    for key in sorted(_given_paths(runtime_params)):
        if key in known or any(path.startswith(f"{key}.") for path in known):
            continue
        close = get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "no setting has a close name"
        problems.append(f"{key} ({hint})")
    if problems:
        raise UnknownSettingError(
            f"unknown parameter(s): {'; '.join(problems)}. Every --params key must name a "
            f"setting of conf/base/parameters_*.yml; fix the spelling and run again"
        )


def _given_paths(params: dict[str, Any], prefix: str = "") -> set[str]:
    """The leaves of runtime parameters: ``{"a": {"b": 1}}`` and ``{"a.b": 1}`` give a.b."""
    paths = set()
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths |= _given_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def catalog_text(conf_source: str | Path, envs: list[str]) -> str:
    """The text of the catalog files of the given environments (for runtime references)."""
    root = Path(conf_source)
    return "\n".join(
        path.read_text()
        for env in envs
        for path in sorted((root / env).glob("**/catalog*.yml"))
        if path.is_file()
    )


def runs_in(pipeline) -> list[str]:
    """The runs (namespaces) whose model comes from pretraining, or from the random_init
    control, in ``pipeline``."""
    from directclr.pipeline_registry import is_node, model_namespace
    from directclr.pipelines.pretraining import PRETRAIN_NODE
    from directclr.pipelines.random_init import INITIALISE_NODE

    return sorted(
        model_namespace(node.name)
        for node in pipeline.nodes
        if is_node(node.name, PRETRAIN_NODE) or is_node(node.name, INITIALISE_NODE)
    )


def _run_parameters(run: str) -> tuple[str, int | None]:
    """Where a run's own settings live, and the seed its namespace sets: a comparison's
    ``compare.simclr.seed_2`` reads ``compare.simclr.pretraining`` with seed 2."""
    return split_seed_namespace(run) or (run, None)


def run_settings_of(params: dict[str, Any], runs: list[str]) -> dict[str, Any]:
    """Each run's training settings, merged over the shared recipe and validated, once."""
    from directclr.training import run_settings

    recipe = params.get("pretraining") or {}
    settings = {}
    for run in runs:
        owner, seed = _run_parameters(run)
        overrides = lookup(params, f"{owner}.pretraining")
        if overrides is None:
            raise ValueError(
                f"parameters {owner}.pretraining are missing; add them to "
                f"conf/base/parameters_pretraining.yml or parameters_compare.yml"
            )
        if seed is not None:
            overrides = {**overrides, "seed": seed}
        settings[run] = run_settings(recipe, overrides, owner)
    return settings


def setting_name(params: dict[str, Any], run: str, key: str) -> str:
    """The name a run's training setting was given by: ``<run>.pretraining.<key>`` if the run
    sets it itself, else the shared ``pretraining.<key>``."""
    owner, _ = _run_parameters(run)
    overrides = lookup(params, f"{owner}.pretraining") or {}
    return f"{owner}.pretraining.{key}" if key in overrides else f"pretraining.{key}"


def check_comparison_settings(params: dict[str, Any], comparisons: list[str]) -> None:
    """A comparison's ``seeds`` must be a non-empty list of distinct integers and its
    ``reference`` one of its runs; checked before any work, naming the parameter."""
    from directclr.pipeline_registry import COMPARISON_SETTINGS

    for name in comparisons:
        entries = params.get(name) or {}
        seeds = entries.get("seeds")
        if not isinstance(seeds, list) or not seeds:
            raise ValueError(
                f"{name}.seeds={seeds!r}: give a non-empty list of seeds, e.g. [0, 1, 2]"
            )
        if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
            raise ValueError(f"{name}.seeds={seeds}: seeds must be integers")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}.seeds={seeds} repeats a seed; list each seed once")
        runs = [run for run in entries if run not in COMPARISON_SETTINGS]
        reference = entries.get("reference")
        if reference not in runs:
            raise ValueError(
                f"{name}.reference={reference!r} is not a run of {name}; choose one of "
                f"{', '.join(runs)}"
            )


def check_runs_fit_data(
    card: dict[str, Any],
    settings: dict[str, Any],
    params: dict[str, Any],
    knn: bool,
    spectrum: bool = False,
) -> None:
    """Stop before training if a run's batch is larger than the images it trains on, the
    kNN probe's k larger than the training split (``knn``: linear_eval is in the run), or
    ``spectrum.split`` a split the dataset does not have (``spectrum``: the spectrum stage
    is in the run)."""
    from directclr.data import pretraining_images

    images = pretraining_images(card)
    problems = []
    for run, config in settings.items():
        if config.batch_size > images:
            name = setting_name(params, run, "batch_size")
            problems.append(
                f"{name}={config.batch_size} is larger than the {images} training images "
                f"(dataset: {card['source']}, max_samples={card.get('max_samples')}); set "
                f"{name} to at most {images}, e.g. --params={name}={_power_of_two_below(images)}"
            )
    k = lookup(params, "linear_eval.knn_k")
    train = int(card["counts"].get("train", 0))
    if knn and k is not None and k > train:
        problems.append(
            f"linear_eval.knn_k={k} is larger than the {train} training images the kNN probe "
            f"votes with; set linear_eval.knn_k to at most {train}"
        )
    split = lookup(params, "spectrum.split")
    if spectrum and split is not None and split not in card["counts"]:
        have = ", ".join(s for s in card["counts"] if s != "unlabeled")
        hint = " (a val split needs data_prep.val_fraction > 0)" if split == "val" else ""
        problems.append(
            f"spectrum.split={split}: the dataset has no {split} split{hint}; it has {have}"
        )
    if problems:
        raise ValueError("the runs do not fit the prepared data: " + "; ".join(problems))


def _power_of_two_below(n: int) -> int:
    return 1 << (max(n, 2).bit_length() - 1)
