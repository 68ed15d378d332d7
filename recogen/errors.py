"""User-facing errors.

Anything a user can fix (a wrong path, an unknown model name, a corrupt image, no network for a
download) raises a :class:`UserError` subclass. The CLI prints its message as one line and exits 2;
the Python API lets it propagate so callers can catch it.
"""


class UserError(Exception):
    """A mistake the user can fix. The message names the problem and the fix."""

    exit_code = 2


class ConfigError(UserError):
    """A bad option or config value."""


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""


class ModelError(UserError):
    """Unknown model, incompatible weights or an input size the model cannot take."""


class OfflineError(UserError):
    """Something had to be downloaded and the network is not reachable."""


class RunError(UserError):
    """A run folder that is missing, incomplete or of the wrong task."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl+C or SIGTERM. The message says what was saved and how to continue."""
