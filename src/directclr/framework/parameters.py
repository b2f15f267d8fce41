"""Checks of the project's Kedro parameters that can run before any node.

* every ``--params`` key, and every key of the environment's parameter files, names a known
  setting (a misspelled one would otherwise be ignored): :class:`CheckedConfigLoader`, the
  project's config loader, also names the file of a duplicate key;
* every run's training settings, merged and validated once (:func:`run_settings_of`), and
  the parameters of each comparison's seed namespaces, which no file holds
  (:func:`seed_run_parameters`);
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

import yaml
from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf
from pydantic import BaseModel

from directclr.comparison import lookup, seed_namespace, split_seed_namespace
from directclr.errors import BadSettingError
from directclr.pipelines.sections import SETTINGS_SECTIONS, settings_class

_RUNTIME_REFERENCE = re.compile(r"\$\{runtime_params:\s*([A-Za-z0-9_.]+)")


class UnknownSettingError(BadSettingError):
    """A ``--params`` key, or a parameters file's key, that names no setting of the project."""


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


def _unknown(given: set[str], known: set[str]) -> list[str]:
    """Each of ``given`` that names no setting, with the closest valid names; a key naming a
    whole section (a prefix of known settings) is accepted."""
    problems = []
    for key in sorted(given):
        if key in known or any(path.startswith(f"{key}.") for path in known):
            continue
        close = get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "no setting has a close name"
        problems.append(f"{key} ({hint})")
    return problems


def check_known_settings(runtime_params: dict[str, Any], known: set[str]) -> None:
    """Stop a run whose ``--params`` name a setting that does not exist, with the closest
    valid names."""
    problems = _unknown(_given_paths(runtime_params), known)
    if problems:
        raise UnknownSettingError(
            f"unknown parameter(s): {'; '.join(problems)}. Every --params key must name a "
            f"setting of conf/base/parameters_*.yml; fix the spelling and run again"
        )


def _given_paths(params: dict[str, Any], prefix: str = "", anchors: bool = False) -> set[str]:
    """The leaves of given parameters: ``{"a": {"b": 1}}`` and ``{"a.b": 1}`` give a.b. With
    ``anchors``, keys that start with "_" are skipped (a parameters file's YAML anchors, used
    by other keys, not parameters)."""
    paths = set()
    for key, value in params.items():
        if anchors and str(key).startswith("_"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths |= _given_paths(value, f"{path}.", anchors)
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


PARAMETER_FILE_SUFFIXES = (".yml", ".yaml", ".json")


class CheckedConfigLoader(OmegaConfigLoader):
    """Kedro's ``OmegaConfigLoader`` (``settings.py``'s ``CONFIG_LOADER_CLASS``) that refuses
    the parameter files of the run's environment when one would be misread: a key given
    twice in one mapping (the YAML loader's error names no file: this one names the file and
    the line), or a key that names no setting (ignored otherwise: :func:`check_parameter_files`).
    Both are found where Kedro first reads the parameters, before any node runs."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        try:
            config = super().__getitem__(key)
        except yaml.constructor.ConstructorError as err:
            _name_the_file(self, key)
            raise BadSettingError(f"a {key} file of {self.conf_source}: {err}") from err
        if key == "parameters" and not getattr(self, "_files_checked", False):
            self._files_checked = True
            check_parameter_files(self)
        return config


def config_files(loader: OmegaConfigLoader, key: str) -> dict[str, list[Path]]:
    """The local files ``loader`` reads for ``key`` (e.g. parameters), by environment: base,
    then the run's environment (local unless ``--env``)."""
    root = Path(str(loader.conf_source))
    envs = dict.fromkeys([loader.base_env, loader.env or loader.default_run_env])
    files: dict[str, list[Path]] = {}
    for env in envs:
        found: list[Path] = []
        for pattern in loader.config_patterns[key]:
            for path in sorted((root / env).glob(pattern)):
                hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
                valid = path.is_file() and path.suffix in PARAMETER_FILE_SUFFIXES
                if valid and not hidden and path not in found:
                    found.append(path)
        files[env] = found
    return files


def _shown(path: Path, loader: OmegaConfigLoader) -> str:
    """A file's path as the user knows it: conf/<env>/<file>."""
    root = Path(str(loader.conf_source))
    return str(path.relative_to(root.parent))


def _name_the_file(loader: OmegaConfigLoader, key: str) -> None:
    """Raise the YAML loader's refusal (a duplicate key) again, naming the file and lines."""
    for paths in config_files(loader, key).values():
        for path in paths:
            try:
                OmegaConf.load(path)
            except yaml.constructor.ConstructorError as err:
                first = err.context_mark.line + 1 if err.context_mark else None
                line = err.problem_mark.line + 1 if err.problem_mark else None
                raise BadSettingError(
                    f"{_shown(path, loader)} line {line}: {err.problem} (in the mapping that "
                    f"starts at line {first}); a key may appear once in a mapping: keep the "
                    f"value you mean, delete the other and run again"
                ) from err


def _new_runs(paths: set[str]) -> set[str]:
    """The settings a file may add beside the base files': a comparison's new run, given by
    its ``<comparison>.<run>.pretraining`` block (parameters_compare.yml)."""
    from directclr.pipeline_registry import COMPARISONS

    training = settings_class("pretraining")
    added = set()
    for path in paths:
        parts = path.split(".")
        if len(parts) >= 3 and parts[0] in COMPARISONS and parts[2] == "pretraining":
            run = ".".join(parts[:3])
            added |= {run} | model_paths(training, run)
    return added


def check_parameter_files(loader: OmegaConfigLoader) -> None:
    """Stop a run whose parameter files (base, and the run's environment: local or ``--env``)
    set a key that names no setting: the file's value would be ignored. The base files
    define every section; the message names the file and the closest valid names."""
    files = config_files(loader, "parameters")
    base: dict[str, Any] = {}
    for path in files.get(loader.base_env, []):
        base.update(yaml.safe_load(path.read_text()) or {})
    known = known_settings(base, catalog_text(loader.conf_source, list(files)))
    for env, paths in files.items():
        if env == loader.base_env:
            continue
        for path in paths:
            params = yaml.safe_load(path.read_text()) or {}
            if not isinstance(params, dict):
                continue
            given = _given_paths(params, anchors=True)
            problems = _unknown(given, known | _new_runs(given))
            if problems:
                shown = _shown(path, loader)
                raise UnknownSettingError(
                    f"{shown}: unknown parameter(s): {'; '.join(problems)}. Every key of a "
                    f"parameters file must name a setting of conf/base/parameters_*.yml; fix "
                    f"the spelling in {shown} and run again"
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
            raise BadSettingError(
                f"parameters {owner}.pretraining are missing; add them to "
                f"conf/base/parameters_pretraining.yml or parameters_compare.yml"
            )
        if seed is not None:
            overrides = {**overrides, "seed": seed}
        settings[run] = run_settings(recipe, overrides, owner)
    return settings


def seed_run_parameters(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parameters of every comparison's seed namespaces, as the files would give them:
    ``<comparison>.<run>.seed_<n>.pretraining`` is the run's own
    ``<comparison>.<run>.pretraining`` with the namespace's seed. The registry makes one
    namespace per seed (:func:`directclr.pipeline_registry.comparison_pipeline`), whose
    pretraining (or random_init) node reads ``params:<namespace>.pretraining``, a parameter no
    file holds. The project's context adds them to the catalog, so that what reads the catalog
    outside a run (kedro-viz) finds them; before a run, the project's hook replaces each with
    the run's merged and validated settings (:func:`run_settings_of`). A comparison whose
    ``seeds`` or runs are malformed is left out here: the hook names it before any node runs."""
    from directclr.pipeline_registry import comparison_layout

    try:
        layout = comparison_layout(params)
    except (TypeError, ValueError):
        return {}
    found = {}
    for name, (runs, seeds) in layout.items():
        for run in runs:
            overrides = lookup(params, f"{name}.{run}.pretraining")
            if not isinstance(overrides, dict):
                continue
            for seed in seeds:
                namespace = seed_namespace(name, run, seed)
                found[f"{namespace}.pretraining"] = {**overrides, "seed": seed}
    return found


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
            raise BadSettingError(
                f"{name}.seeds={seeds!r}: give a non-empty list of seeds, e.g. [0, 1, 2]"
            )
        if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
            raise BadSettingError(f"{name}.seeds={seeds}: seeds must be integers")
        if len(set(seeds)) != len(seeds):
            raise BadSettingError(f"{name}.seeds={seeds} repeats a seed; list each seed once")
        runs = [run for run in entries if run not in COMPARISON_SETTINGS]
        reference = entries.get("reference")
        if reference not in runs:
            raise BadSettingError(
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
    ``spectrum.split`` a split the dataset does not have, or ``spectrum.top_k`` larger than
    a run's representation (``spectrum``: the spectrum stage is in the run)."""
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
    top_k = lookup(params, "spectrum.top_k")
    if spectrum and isinstance(top_k, int) and settings:
        from directclr.backbones import representation_dim

        dims = {run: representation_dim(c.backbone, c.width) for run, c in settings.items()}
        run, dim = min(dims.items(), key=lambda item: item[1])
        if top_k > dim:
            problems.append(
                f"spectrum.top_k={top_k} is larger than the {dim} dimensions of {run}'s "
                f"representation r, whose variance share it reports; set spectrum.top_k to "
                f"at most {dim}"
            )
    split = lookup(params, "spectrum.split")
    if spectrum and split is not None and split not in card["counts"]:
        have = ", ".join(s for s in card["counts"] if s != "unlabeled")
        hint = " (a val split needs data_prep.val_fraction > 0)" if split == "val" else ""
        problems.append(
            f"spectrum.split={split}: the dataset has no {split} split{hint}; it has {have}"
        )
    if problems:
        raise BadSettingError("the runs do not fit the prepared data: " + "; ".join(problems))


def _power_of_two_below(n: int) -> int:
    return 1 << (max(n, 2).bit_length() - 1)
