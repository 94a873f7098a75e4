"""What every `python -m flows.<name>` entry point shares: quiet Prefect, clean errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Callable, Iterator

from schemas.errors import PipelineError


@contextlib.contextmanager
def prefect_session(debug: bool) -> Iterator[None]:
    """Prefect settings for a command-line run.

    With no server set up, Prefect starts a temporary local one. Here it
    gets time to start on a slow machine, sends no telemetry, and keeps the
    terminal to our own output: Prefect's console logs are shown with
    `--debug` or when PREFECT_LOGGING_LEVEL is set. Run logs still reach the
    Prefect API (and UI) in full.
    """
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates: dict = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 90
    quiet = not debug and "PREFECT_LOGGING_LEVEL" not in os.environ
    if quiet:
        # Left quiet until exit: the temporary server logs its shutdown at exit.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)
    with temporary_settings(updates=updates):
        yield


def run_command(body: Callable[[], int], debug: bool) -> int:
    """Run a command body; a failure prints one `error:` line and returns its exit code.

    With `debug`, the full traceback is printed too.
    """
    try:
        return body()
    except PipelineError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not debug:
            print("(run again with --debug for the full traceback)", file=sys.stderr)
        return 1
