"""Errors that end a command with a one-line message saying what to do (no traceback)."""


class AWDLSTMError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2."""


class ConfigError(AWDLSTMError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(AWDLSTMError):
    """A corpus is missing, empty, not UTF-8, or too small for the batch size."""


class CheckpointError(AWDLSTMError):
    """A checkpoint or run directory is missing, damaged or does not match."""


class TrainingError(AWDLSTMError):
    """Training cannot go on (for example the loss is not finite)."""
