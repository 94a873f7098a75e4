"""What every `python -m flows.<name>` entry point shares: quiet Prefect, clean errors."""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Sequence

from flows._starting import interrupts_as_usual, interrupts_end_the_process, interrupts_while_starting, starting
from flows._server import (
    ServerStartError, reusable_server_url, server_started, start_early, stop_temporary_server, temporary_server,
)
from flows._preflight import check_api_reachable
from schemas.errors import PipelineError

if TYPE_CHECKING:
    from schemas.data import DataConfig
    from schemas.device import InputShape

# Modules the training stages import on first use (scikit-learn and matplotlib are
# imported inside functions; torch.optim pulls in torch's compiler stack when the
# first optimizer is built), and those a flow call imports (Prefect's engines):
# imports that can run while a temporary Prefect server starts, instead of after it.
TRAINING_IMPORTS = (
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.artifacts",
    "fastapi.encoders",  # Prefect's flow call encodes parameters with it
    "torch._dynamo",
    "sklearn.datasets",
    "sklearn.impute",
    "sklearn.model_selection",
    "sklearn.preprocessing",
    "sklearn.metrics",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)


@contextlib.contextmanager
def prefect_session(debug: bool, warm_imports: Sequence[str] = ()) -> Iterator[None]:
    """Prefect settings for a command-line run, and the server it talks to.

    The server is the one Prefect's settings name (PREFECT_API_URL); else a
    reusable local one (`python -m flows.server start`) while it answers;
    else a temporary one for this command (flows/_server.py), started by the
    command's first lines (`flows._server.start_early`) or here, while this
    thread imports `warm_imports`. It sends no telemetry, and the terminal
    keeps to our own output: Prefect's console logs are shown with `--debug`
    or when PREFECT_LOGGING_LEVEL is set. Run logs still reach the Prefect
    API (and UI) in full.

    With our own servers, temporary or reusable, flow-run heartbeats are off
    (unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set anywhere): they serve an
    automation that marks silent runs crashed, which a temporary server does
    not outlive and a reusable one does not have, and stopping the heartbeat
    thread delays the end of each flow run by up to a second.
    """
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        get_current_settings,
        temporary_settings,
    )

    updates: dict = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    quiet = not debug and "PREFECT_LOGGING_LEVEL" not in os.environ
    if quiet:
        # Left quiet until exit: Prefect's workers flush their last events and logs at exit.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        stop_temporary_server()  # started on a guess that the settings (prefect.toml, .env) overrule
        check_api_reachable()  # one line naming PREFECT_API_URL, not Prefect's traceback after the first call
    else:
        url = None if server_started() else reusable_server_url()
        updates[PREFECT_API_URL] = url or _temporary_server_url(warm_imports, quiet)
        if "heartbeat_frequency" not in get_current_settings().flows.model_fields_set:
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None  # unless set (environment, profile, prefect.toml)
    with temporary_settings(updates=updates):
        yield


def _temporary_server_url(warm_imports: Sequence[str], quiet: bool) -> str:
    """This process's temporary server's API URL, once it answers; `warm_imports` are imported meanwhile.

    It waits PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS where that is
    set (environment, profile, prefect.toml), else 90 s (a cold start on a
    busy machine takes longer than Prefect's default of 20 s).
    """
    from prefect.settings import get_current_settings

    ephemeral = get_current_settings().server.ephemeral
    timeout = ephemeral.startup_timeout_seconds if "startup_timeout_seconds" in ephemeral.model_fields_set else 90
    server = temporary_server(quiet)
    for name in warm_imports:
        try:
            importlib.import_module(name)
        except Exception:  # only a head start: the stage that needs the module reports any problem
            pass
    try:
        server.wait_until_healthy(timeout)
    except ServerStartError as exc:
        raise PipelineError(str(exc)) from None
    return server.api_url


def start_command(
    load: Callable[[], Any], to_yaml: Callable[[Any], str], data_source: Callable[[Any], Any], print_config: bool,
    debug: bool,
) -> int | None:
    """A training command's first step, on the schemas alone: its exit code if it runs no flow, else None.

    Run before torch and Prefect are imported: `load()` reads the config (a
    config that does not load is reported in one `error:` line with its exit
    code), `print_config` prints it with `to_yaml`, neither starting a Prefect
    server. For a run, the temporary server starts now (`start_early`) and
    comes up while torch, Prefect and the stages are imported and the data is
    checked; not when the data file `data_source(config)` names is missing,
    which the data check then reports.
    """
    configs: list[Any] = []

    def body() -> int:
        config = load()
        if print_config:
            print(to_yaml(config), end="")
        else:
            configs.append(config)
        return 0

    code = run_command(body, debug)
    if not configs:
        return code
    start_early(debug, data_path=getattr(data_source(configs[0]), "path", None))
    return None


def start_or_exit(start: Callable[[], int | None]) -> None:
    """A command's `__main__` start: OpenMP's wait policy, then `start()`; exit with its code if it runs no flow."""
    from tasks.common.omp import passive_openmp_default

    passive_openmp_default()  # OpenMP reads its wait policy once, when torch loads (tasks/common/omp.py)
    code = start()
    if code is not None:
        exit_quickly(code)


def exit_quickly(code: int) -> NoReturn:
    """`sys.exit(code)`, without the garbage collector's pass over every object at exit.

    With torch, Prefect, scikit-learn and matplotlib loaded, that pass is a
    visible share of a short command's wall time. Frozen objects are still
    freed by reference counting, atexit handlers still run and open files
    are still flushed; only objects in reference cycles are left to the
    operating system, as they may be at any interpreter exit.
    """
    if starting():
        interrupts_end_the_process()  # a Ctrl-C now cannot break Prefect's exit-time flush into a traceback
    gc.freeze()
    sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled as Ctrl-C is (the run is marked failed, files are cleaned up), exit 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread, as Ctrl-C raises KeyboardInterrupt.

    Inside a flow run Prefect's own SIGTERM handler takes over: it fails the
    flow run, restores this handler and sends the signal again, which raises here.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_sigterm(exc: BaseException) -> bool:
    """Whether `exc` is how a SIGTERM surfaced: ours, or Prefect's TerminationSignal from inside a flow run."""
    return isinstance(exc, Terminated) or getattr(exc, "signal", None) == signal.SIGTERM


def run_command(body: Callable[[], int], debug: bool, resume_hint: Callable[[], str | None] | None = None) -> int:
    """Run a command body; a failure prints one `error:` line and returns its exit code.

    With `debug`, the full traceback is printed too. On Ctrl-C (exit 130) or
    SIGTERM (exit 143) `resume_hint()`, when it gives a line, says how to continue.
    In a command's own process (flows/_starting.py), Ctrl-C raises KeyboardInterrupt
    only while `body` runs, and once one is reported the next ends the process.
    """
    owned = starting()
    if owned:
        interrupts_as_usual()
    try:
        return _run_body(body, debug, resume_hint, owned)
    finally:
        if owned and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            interrupts_while_starting()  # imports may follow (the early config check); exit_quickly ends it


def _run_body(body: Callable[[], int], debug: bool, resume_hint: Callable[[], str | None] | None,
              owned: bool) -> int:
    try:
        with sigterm_as_interrupt():
            return body()
    except PipelineError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if owned:
            interrupts_end_the_process()  # a second Ctrl-C while the run is marked failed: out at once
        return _interrupted(exc, resume_hint)
    except OSError as exc:  # disk full, read-only file system...: name the file, no traceback
        if debug:
            traceback.print_exc()
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not debug:
            print("(run again with --debug for the full traceback)", file=sys.stderr)
        return 1
    except BaseException as exc:  # Prefect's TerminationSignal, when a SIGTERM is not re-raised as ours
        if _is_sigterm(exc):
            if owned:
                interrupts_end_the_process()
            return _interrupted(exc, resume_hint)
        raise


def _interrupted(exc: BaseException, resume_hint: Callable[[], str | None] | None) -> int:
    """Say that the command was interrupted (Ctrl-C, 130) or terminated (SIGTERM, 143), and how to continue."""
    terminated = _is_sigterm(exc)
    print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
    hint = _hint(resume_hint)
    if hint:
        print(hint, file=sys.stderr)
    return 128 + signal.SIGTERM if terminated else 130


def os_error_line(exc: OSError) -> str:
    """`No space left on device (ENOSPC): runs/x/metrics.json`: the reason, its errno name and the file."""
    import errno as errno_names

    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno_names.errorcode.get(exc.errno or 0)
    where = ": " + " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{reason}{f' ({code})' if code else ''}{where if exc.filename is not None else ''}"


def _hint(resume_hint: Callable[[], str | None] | None) -> str | None:
    """The resume hint, or None when there is none or it cannot be made."""
    if resume_hint is None:
        return None
    try:
        return resume_hint()
    except (Exception, KeyboardInterrupt):  # a second Ctrl-C, an unreadable folder
        return None


def command_line(module: str, argv: Sequence[str | os.PathLike] | None) -> str:
    """`python -m <module> <argv>`, quoted for a POSIX shell; argv defaults to this process's arguments."""
    import shlex

    return shlex.join(["python", "-m", module, *map(str, sys.argv[1:] if argv is None else argv)])


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (as a user would type it), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_data_first(data: "DataConfig") -> "InputShape | None":
    """Raise the data stage's own DataError for what the data shows, before any server or run folder.

    A missing or unreadable file, a missing target column, a table the
    reader refuses, and for a table every column problem at once (mixed
    numbers and text, gaps with data.impute none, unknown column names,
    empty targets that may not be dropped) and every problem splitting its
    target (too few rows for train/val/test, a single class, non-integer
    class labels, a class too small to stratify), in one message: errors that
    would otherwise come only after Prefect's temporary server had started.
    NPZ, builtin and image data get the rest of these checks in the data stage.
    """
    from tasks.data import peek_shape

    try:
        return peek_shape(data)  # the shape, for the checks of the model's size that follow
    except PipelineError:
        raise
    except Exception:  # an I/O hiccup, say: the data stage (with its retry policy) reports it
        return None
