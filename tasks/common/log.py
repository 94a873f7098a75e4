"""Lines for the person running the pipeline: stderr, and the Prefect run's log when inside a run."""

from __future__ import annotations

import logging
import sys


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow run or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def log_to_prefect(line: str, level: int = logging.INFO) -> None:
    """Send the line to the Prefect run's log (the UI) when running inside Prefect."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().log(level, line)
    except MissingContextError:
        pass


def say(line: str) -> None:
    """One line to stderr, and to the Prefect run's log when running inside Prefect."""
    print(line, file=sys.stderr, flush=True)
    log_to_prefect(line)
