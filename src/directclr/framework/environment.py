"""What must hold in the environment before any library of a run is imported.

MLflow decides at import whether it sends usage telemetry, and the ``kedro`` command imports
its plugins (kedro-mlflow, hence MLflow) before it reads the project's ``settings.py``. So
:func:`quiet` is registered as a ``kedro.init`` entry point (``pyproject.toml``), which Kedro
calls first of all, and is also called by ``python -m directclr`` and the tests' conftest.

The tracking switch is read from the environment for the same reason: the project's hooks
are chosen before any configuration file is read.
"""

from __future__ import annotations

import os
import warnings

# Off whatever the environment said: this project phones no one.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}
TRACKING_SWITCH = "DIRECTCLR_TRACKING"
OFF = ("0", "off", "false", "no")


def quiet() -> None:
    """Switch off every library's usage telemetry for this process and its children, and
    MLflow's import-time advice about model signatures (kedro-mlflow's pipeline model; this
    project logs no MLflow models)."""
    os.environ.update(TELEMETRY_OFF)
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


def tracking_enabled() -> bool:
    """Runs are tracked in MLflow unless ``DIRECTCLR_TRACKING`` is ``off`` (or 0/false/no).
    Under torchrun only rank 0 tracks."""
    switch = os.environ.get(TRACKING_SWITCH, "on").strip().lower()
    if switch not in OFF + ("1", "on", "true", "yes"):
        raise ValueError(f"{TRACKING_SWITCH}={os.environ[TRACKING_SWITCH]!r}: set it to on or off")
    return switch not in OFF and int(os.environ.get("RANK", "0")) == 0
