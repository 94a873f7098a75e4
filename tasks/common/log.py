"""Lines for the person running the pipeline: stderr, and the Prefect run's log when inside a run."""

from __future__ import annotations

import logging
import re
import sys


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow run or task run.

    A process that has not imported Prefect (a rank of distributed training,
    a sweep worker, a script) runs inside none, and does not import it here.
    """
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def log_to_prefect(line: str, level: int = logging.INFO) -> None:
    """Send the line to the Prefect run's log (the UI) when running inside Prefect."""
    if "prefect" not in sys.modules:  # not imported: no run to log to (see in_prefect_run)
        return
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().log(level, line)
    except MissingContextError:
        pass


_ECHO = {"terminal": True}


def echo_to_terminal(on: bool) -> None:
    """Whether `say` and the epoch display write to stderr as well as to the Prefect run's log.

    Off in a run a served deployment started: its process prints Prefect's
    run log itself (each line would show twice on the serving terminal), and
    the run's page in the UI is where its lines are read.
    """
    _ECHO["terminal"] = on


def echoes_to_terminal() -> bool:
    return _ECHO["terminal"]


def say(line: str) -> None:
    """One line to stderr (see `echo_to_terminal`), and to the Prefect run's log when running inside Prefect."""
    if _ECHO["terminal"]:
        print(line, file=sys.stderr, flush=True)
    log_to_prefect(line)


class _PipelineErrorsInOneLine(logging.Filter):
    """A pipeline error in a Prefect engine record: its message alone, said once.

    The traceback is dropped from a record whose exception is one of the
    pipeline's own errors; a task's closing line does not repeat the error
    its own error line said; and the engine's last word on a flow run that
    failed with one ("Engine execution exited with unexpected exception")
    is dropped: the run's "Finished in state Failed('DataError: ...')" said it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from schemas.errors import PipelineError, first_line

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            message, error = record.getMessage(), first_line(exc)
            if message.startswith("Engine execution exited with unexpected exception"):
                return False
            record.msg = message if error in message else f"{message}: {type(exc).__name__}: {error}"
            record.args = ()
            record.exc_info, record.exc_text = None, None
        elif record.name.startswith("prefect.task_runs") and _TASK_FAILED.match(record.getMessage()):
            if _TASK_FAILED.match(record.getMessage()).group(1) in _pipeline_error_names():
                record.msg, record.args = "Finished in state Failed (the error is in the line above)", ()
        return True


# A task's closing line after an exception: "Finished in state Failed('Task run encountered an exception X: ...')".
_TASK_FAILED = re.compile(r"Finished in state Failed\(['\"]Task run encountered an exception (\w+): ")


def _pipeline_error_names() -> set[str]:
    from schemas.errors import PipelineError

    names, pending = set(), [PipelineError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return names


def pipeline_errors_in_one_line() -> None:
    """Prefect's engines log a failed run's exception with its traceback ("Engine execution exited with
    unexpected exception", "Task run failed with exception") and repeat it in each closing line. The
    pipeline's own errors say what is wrong and what to do in their message, so in the run's log they are
    that message alone, once per run level (the task's line, the flow run's state). Idempotent."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _PipelineErrorsInOneLine) for f in logger.filters):
            logger.addFilter(_PipelineErrorsInOneLine())
