"""Contrastive pretraining, one room per idea:

* :mod:`~directclr.training.config`: a run's settings (:class:`PretrainingConfig`), merged
  and validated once, and the run's key (what a checkpoint is filed under);
* :mod:`~directclr.training.loop`: :func:`pretrain`, the loop, read top to bottom;
* :mod:`~directclr.training.state`: what training changes, and the checkpoint pair that
  writes and reads it;
* :mod:`~directclr.training.monitoring`: the guards that stop a bad run, the label-free
  measures of each epoch, the history's row, progress and live recording;
* :mod:`~directclr.training.processes`: ``devices: N`` started from one process;
* :mod:`~directclr.training.control`: the untrained ``random_init`` control.
"""

from directclr.training.config import (
    PretrainingConfig,
    SettingsError,
    execution_setting,
    execution_settings,
    merge_settings,
    run_key,
    run_settings,
    validated_settings,
)
from directclr.training.control import control_summary, random_init_model, untrained_history
from directclr.training.loop import pretrain
from directclr.training.monitoring import (
    Recorder,
    check_not_constant,
    spectrum_history,
    training_summary,
)

__all__ = [
    "PretrainingConfig",
    "Recorder",
    "SettingsError",
    "check_not_constant",
    "control_summary",
    "execution_setting",
    "execution_settings",
    "merge_settings",
    "pretrain",
    "random_init_model",
    "run_key",
    "run_settings",
    "spectrum_history",
    "training_summary",
    "untrained_history",
    "validated_settings",
]
