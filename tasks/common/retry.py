"""Which failures Prefect retries: transient I/O only, never a deterministic error."""

from __future__ import annotations

import errno
import logging
from typing import Any

from schemas.base import RetryPolicy
from schemas.errors import PipelineError
from tasks.common.log import log_to_prefect

TRANSIENT = (OSError, TimeoutError, ConnectionError)
NEVER = (PipelineError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# A full disk, an exhausted quota or a read-only file system stays so for the seconds a retry waits.
NEVER_ERRNO = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS) if code)


class RetryWithSmallerBatch(RuntimeError):
    """CUDA ran out of memory; the retry continues with a smaller batch (train.oom_smaller_batch)."""


class RankFailed(RuntimeError):
    """A rank of data-parallel training died or raised an unexpected error; the retry resumes from the checkpoint."""


def is_transient_error(exc: BaseException) -> bool:
    """True for I/O-like errors worth another try; config, data and shape errors are not."""
    if isinstance(exc, (RetryWithSmallerBatch, RankFailed)):
        return True
    if isinstance(exc, OSError) and exc.errno in NEVER_ERRNO:
        return False
    return isinstance(exc, TRANSIENT) and not isinstance(exc, NEVER)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only when the failure was transient.

    The exception is read from the state, not re-raised, so its traceback does
    not grow frames of this function; a failure not retried says why on the
    task run's log, in one line.
    """
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):
        return False
    if is_transient_error(exc):
        return True
    log_to_prefect(f"{type(exc).__name__}: {exc} (not retried: not transient)", logging.ERROR)
    return False


def retry_options(policy: RetryPolicy) -> dict[str, Any]:
    """Options for `task.with_options(...)` from a stage's retry policy."""
    return {
        "retries": policy.retries,
        "retry_delay_seconds": policy.delay_seconds,
        "retry_condition_fn": retry_if_transient,
    }
