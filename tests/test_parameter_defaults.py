"""The documented parameters and the settings classes' defaults say the same thing.

Each settings class is the one place its defaults are written; ``conf/base/parameters_*.yml``
documents them for the user. Every key the YAML sets under a section of
:data:`~directclr.pipelines.sections.SETTINGS_SECTIONS` must equal the class's default for
that key, nested settings included, except where the YAML differs on purpose (listed below,
each with its reason). Sections that no class types are a run's own settings, listed too.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader

from directclr.comparison import lookup
from directclr.pipeline_registry import COMPARISONS
from directclr.pipelines.sections import SETTINGS_SECTIONS, settings_class
from tests.conftest import REPO

# Keys the YAML sets to other values than the class on purpose.
DIFFERENT_ON_PURPOSE = {
    "pretraining.augmentation": "the YAML's recipe is SimCLR's scaled to the 8x8 grey digits "
    "(milder crops, no flips, no colour); the class's default is SimCLR's own recipe",
    "embeddings.lidar.augmentation": "the shared pretraining recipe's view1 in both: the "
    "YAML's recipe (${pretraining.augmentation.view1}) and the class's (TwoViewAugmentation)",
}
# Top-level sections that no settings class types: each run's own settings, laid over the
# shared pretraining recipe when the run is checked (framework/parameters.py).
RUNS_OWN = {
    "directclr": "the directclr run's own training settings",
    "simclr": "the simclr run's own training settings",
    **{name: "a comparison: its seeds, reference and runs' own settings" for name in COMPARISONS},
}


@pytest.fixture(scope="module")
def documented() -> dict[str, Any]:
    """conf/base's parameters, as Kedro reads them (anchors and interpolations resolved)."""
    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base")
    return loader["parameters"]


def leaves(settings: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The dotted keys a nested dict of settings sets, and their values."""
    found = {}
    for key, value in settings.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict):
            found |= leaves(value, path)
        else:
            found[path] = value
    return found


def same(given: Any, default: Any) -> bool:
    """Equal, numbers to 1e-6 relative (the YAML writes 4/3 as 1.3333333), sequences item
    by item."""
    if isinstance(given, list | tuple) and isinstance(default, list | tuple):
        return len(given) == len(default) and all(map(same, given, default))
    numbers = (int, float)
    if isinstance(given, numbers) and isinstance(default, numbers):
        if isinstance(given, bool) or isinstance(default, bool):
            return given is default
        return math.isclose(given, default, rel_tol=1e-6)
    return given == default


def test_the_comparison_of_values():
    assert same([0.75, 1.3333333], (3 / 4, 4 / 3))
    assert same(20, 20.0)
    assert not same(30, 20)
    assert not same(True, 1)
    assert not same("auto", None)
    assert not same([1, 2], [1, 2, 3])


@pytest.mark.parametrize("section", SETTINGS_SECTIONS)
def test_the_yaml_sets_the_class_defaults(section, documented):
    given = lookup(documented, section)
    assert isinstance(given, dict), f"{section} is not documented in conf/base/parameters_*.yml"
    defaults = settings_class(section)().model_dump(mode="json")
    disagree = []
    for path, value in leaves(given, section).items():
        if any(path == key or path.startswith(f"{key}.") for key in DIFFERENT_ON_PURPOSE):
            continue
        default = lookup(defaults, path.removeprefix(f"{section}."))
        if not same(value, default):
            disagree.append(f"{path}: YAML {value!r}, class {default!r}")
    assert disagree == []


def test_every_yaml_section_is_typed_or_a_runs_own(documented):
    typed = {section.partition(".")[0] for section in SETTINGS_SECTIONS}
    sections = {name for name in documented if not name.startswith("_")}  # "_x": YAML anchors
    assert sections - typed - set(RUNS_OWN) == set()
    assert set(RUNS_OWN) <= sections  # no stale entry
