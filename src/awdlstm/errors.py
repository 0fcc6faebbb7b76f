"""Errors that end a command with a one-line message saying what to do (no traceback)."""

from __future__ import annotations


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


def cause_of(err: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``err``'s chain of causes (libraries wrap
    errors: torch.save reports a full disk as a RuntimeError, torch.compile wraps a timeout)."""
    for _ in range(10):
        if err is None or isinstance(err, kind):
            return err
        err = err.__cause__ or err.__context__
    return None
