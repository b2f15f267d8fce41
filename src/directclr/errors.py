"""The project's errors that a user causes and can fix: a bad setting, a bad file.

Their message says everything the user needs (the setting or file, and what to do), so the
``kedro`` command prints the message alone for them, without a traceback
(:func:`~directclr.framework.environment.show_user_errors`); a bug keeps its traceback.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """An error whose message names the setting or file at fault and says what to do."""


class BadSettingError(UserFacingError, ValueError):
    """A setting, or a parameters file, that cannot work as given."""


class CorruptFileError(UserFacingError, RuntimeError):
    """A file the run reads that is damaged: the message names it and says how to replace it."""


class TrainingDiverged(UserFacingError, FloatingPointError):
    """Training went bad (a non-finite loss or weight, a representation collapsed to a point or
    a line, or exploded): the run stops, its last good checkpoint kept, and the message says
    which setting to change."""


class MissingFileError(UserFacingError, FileNotFoundError):
    """A file the run needs is not where the settings point: the message names it and the
    setting, and says how to get it."""
