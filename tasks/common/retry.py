"""Which failures Prefect retries: transient I/O only, never a deterministic error."""

from __future__ import annotations

import errno
from typing import Any

from schemas.base import RetryPolicy
from schemas.errors import PipelineError

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
    """Prefect `retry_condition_fn`: retry only when the failure was transient."""
    try:
        state.result()
    except Exception as exc:  # the task's exception is re-raised by result()
        return is_transient_error(exc)
    return False


def retry_options(policy: RetryPolicy) -> dict[str, Any]:
    """Options for `task.with_options(...)` from a stage's retry policy."""
    return {
        "retries": policy.retries,
        "retry_delay_seconds": policy.delay_seconds,
        "retry_condition_fn": retry_if_transient,
    }
