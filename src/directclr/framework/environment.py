"""What must hold in the environment before any library of a run is imported.

MLflow decides at import whether it sends usage telemetry, and the ``kedro`` command imports
its plugins (kedro-mlflow, hence MLflow) before it reads the project's ``settings.py``. So
:func:`quiet` is registered as a ``kedro.init`` entry point (``pyproject.toml``), which Kedro
calls first of all, and is also called by ``python -m directclr`` and the tests' conftest.

The tracking switch is read from the environment for the same reason: the project's hooks
are chosen before any configuration file is read.

:func:`show_user_errors` makes the ``kedro`` command print a user's error (a bad setting, a
bad file: :class:`~directclr.errors.UserFacingError`) as its message alone, where Kedro's
rich traceback would bury it under some 160 lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from types import TracebackType

from kedro.framework.hooks import hook_impl

from directclr.errors import UserFacingError

# Off whatever the environment said: this project phones no one.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}
TRACKING_SWITCH = "DIRECTCLR_TRACKING"
VERBOSE_SWITCH = "DIRECTCLR_VERBOSE"
OFF = ("0", "off", "false", "no")
ON = ("1", "on", "true", "yes")


def quiet() -> None:
    """Switch off every library's usage telemetry for this process and its children, keep
    MLflow's advice about model signatures out of every command
    (:func:`_define_kedro_mlflows_model_quietly`), and log for a terminal only where there is
    one (:func:`rich_logs_in_a_terminal`)."""
    os.environ.update(TELEMETRY_OFF)
    _define_kedro_mlflows_model_quietly()
    rich_logs_in_a_terminal()


def _define_kedro_mlflows_model_quietly() -> None:
    """Import kedro-mlflow's pipeline model once, its class definition's warning muted.

    MLflow warns "Add type hints to the `predict` method" when any ``PythonModel`` subclass
    is defined; kedro-mlflow defines one (``KedroPipelineModel``) on import, so every Kedro
    command would start with the warning. It concerns a model this project never logs.
    MLflow issues it inside its own ``catch_warnings`` block that shows each UserWarning once,
    which outranks any filter set here; so the one import is made with the warnings display
    switched off, and every later warning is shown as usual."""
    if "kedro_mlflow.mlflow.kedro_pipeline_model" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.showwarning = lambda *args, **kwargs: None
        with contextlib.suppress(ImportError):  # without kedro-mlflow: nothing to quieten
            import kedro_mlflow.mlflow.kedro_pipeline_model  # noqa: F401


def rich_logs_in_a_terminal() -> None:
    """The project's ``conf/logging.yml`` logs one plain line per record, right for a log
    file or a pipe (Kedro's rich layout wraps at 80 columns there and splits dataset names
    across lines). In a terminal, switch to Kedro's rich layout. A logging configuration of
    the user's own (``KEDRO_LOGGING_CONFIG``) is left alone, as are notebooks."""
    if os.environ.get("KEDRO_LOGGING_CONFIG") or not sys.stdout.isatty():
        return
    if "ipykernel" in sys.modules:
        return
    from pathlib import Path

    import yaml
    from kedro.framework import project

    rich = Path(project.__file__).parent / "rich_logging.yml"
    project.LOGGING.configure(yaml.safe_load(rich.read_text(encoding="utf-8")))


def tracking_enabled() -> bool:
    """Runs are tracked in MLflow unless ``DIRECTCLR_TRACKING`` is ``off`` (or 0/false/no).
    Under torchrun only rank 0 tracks."""
    switch = os.environ.get(TRACKING_SWITCH, "on").strip().lower()
    if switch not in OFF + ON:
        raise ValueError(f"{TRACKING_SWITCH}={os.environ[TRACKING_SWITCH]!r}: set it to on or off")
    return switch not in OFF and int(os.environ.get("RANK", "0")) == 0


def user_error_in(error: BaseException) -> UserFacingError | None:
    """The user-facing error ``error`` is, or was raised from (Kedro wraps some errors, a
    dataset's load error for one, in its own, ``from`` them). An error raised while another
    was handled is not one: it may be a bug."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserFacingError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def verbose() -> bool:
    """Tracebacks of user errors too: ``DIRECTCLR_VERBOSE=1``, or ``--verbose`` of a Kedro
    command that has it (``kedro run`` has not)."""
    if os.environ.get(VERBOSE_SWITCH, "").strip().lower() in ON:
        return True
    cli = sys.modules.get("kedro.framework.cli.utils")
    return bool(cli and getattr(cli.KedroCliError, "VERBOSE_ERROR", False))


def show_user_errors() -> None:
    """Print an uncaught :class:`~directclr.errors.UserFacingError` as its message alone,
    which names the setting or file and says what to do; any other error (a bug) keeps the
    traceback of the hook installed before this one (Kedro's rich one), as does every error
    under :func:`verbose`. Installed by :class:`ShowUserErrors` once Kedro has set up its
    logging for the last time (its handler installs the rich traceback hook, again after
    reading ``settings.py``)."""
    previous = sys.excepthook
    if getattr(previous, "shows_user_errors", False):
        return

    def excepthook(
        kind: type[BaseException], error: BaseException, trace: TracebackType | None
    ) -> None:
        user = user_error_in(error)
        if user is None or verbose():
            previous(kind, error, trace)
            return
        print(f"{type(user).__name__}: {user}", file=sys.stderr)
        print(f"({VERBOSE_SWITCH}=1 shows the traceback)", file=sys.stderr)

    excepthook.shows_user_errors = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


class ShowUserErrors:
    """The hook (first of all) that puts :func:`show_user_errors` over the traceback hook of
    Kedro's logging, set up for the last time by then, when a run's context is made."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        show_user_errors()
