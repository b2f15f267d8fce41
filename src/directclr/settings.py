"""Project settings."""

import warnings

from kedro.config import OmegaConfigLoader

from directclr.framework.hooks import CheckRunBeforeWork, RankZeroWrites

# The project documents `kedro run --pipeline=<name>`, the spelling its users know; Kedro 1.x
# also accepts `--pipelines`. Keep the run log free of the notice about the older spelling.
warnings.filterwarnings("ignore", message="Option '--pipeline' is deprecated")

HOOKS = (CheckRunBeforeWork(), RankZeroWrites())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
