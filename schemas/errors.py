"""Errors the pipeline reports to users: each names what is wrong and what was expected.

They are deterministic (bad config, bad data, a tampered bundle), so Prefect
never retries them; see `tasks.common.retry.is_transient_error`.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every user-facing error. The CLI prints the message, not a traceback."""

    exit_code = 1


class ConfigError(PipelineError, ValueError):
    """A config key has a bad value, or keys that cannot go together."""

    exit_code = 2


class DataError(PipelineError, ValueError):
    """Input data cannot be used: missing file or column, bad values, too few rows."""

    exit_code = 3


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on, for example a NaN or infinite loss."""

    exit_code = 4


class BundleError(PipelineError, ValueError):
    """A saved model bundle is missing files, was modified, or is of another format."""

    exit_code = 5


class ServiceError(PipelineError):
    """A service the command needs cannot be reached: the Prefect server PREFECT_API_URL names.

    Exit 1, as other failures of the environment (a full disk): nothing is wrong with the config or the data.
    """

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
