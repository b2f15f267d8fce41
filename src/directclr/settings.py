"""Project settings."""

import warnings

from directclr.framework.environment import ShowUserErrors, quiet

quiet()  # again, for sessions made from Python rather than the kedro command

from directclr.framework.context import ProjectContext  # noqa: E402
from directclr.framework.hooks import CheckRunBeforeWork, RankZeroWrites  # noqa: E402
from directclr.framework.parameters import CheckedConfigLoader  # noqa: E402
from directclr.framework.tracking import ProjectMlflowHook, TrackRuns  # noqa: E402
from directclr.framework.versions import PinRunVersions  # noqa: E402

# The project documents `kedro run --pipeline=<name>`, the spelling its users know; Kedro 1.x
# also accepts `--pipelines`. Keep the run log free of the notice about the older spelling.
warnings.filterwarnings("ignore", message="Option '--pipeline' is deprecated")
# kedro-viz (12.5) imports FastAPI's ORJSONResponse, which FastAPI now deprecates: a notice for
# kedro-viz's maintainers that every `kedro viz build` would print, nothing a user can change.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated", module=r"kedro_viz\.")

# kedro-mlflow's hook registers itself; the project registers it here instead, as
# ProjectMlflowHook, which tracks only when DIRECTCLR_TRACKING is not off (and on rank 0).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")
_MLFLOW = ProjectMlflowHook()
# ShowUserErrors (first): a bad setting or file prints its message, without a traceback.
HOOKS = (
    ShowUserErrors(),
    CheckRunBeforeWork(),
    RankZeroWrites(),
    _MLFLOW,
    TrackRuns(_MLFLOW),
    PinRunVersions(),
)

# Kedro's context, whose catalog also holds the comparisons' per-seed parameters and, read
# outside a run (kedro-viz), previews only the datasets that have data.
CONTEXT_CLASS = ProjectContext

# OmegaConfigLoader that names the parameters file of a duplicate or misspelled key.
CONFIG_LOADER_CLASS = CheckedConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
