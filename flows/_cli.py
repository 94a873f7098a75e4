"""What every `python -m flows.<name>` entry point shares: quiet Prefect, clean errors."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NoReturn, Sequence

from schemas.errors import PipelineError

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

    from schemas.data import DataConfig

# Modules the training stages import on first use (scikit-learn and matplotlib are
# imported inside functions; torch.optim pulls in torch's compiler stack when the
# first optimizer is built): imports that can run while a temporary Prefect
# server starts, instead of after it.
TRAINING_IMPORTS = (
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
    """Prefect settings for a command-line run.

    With no server set up, Prefect starts a temporary local one. Here it
    gets time to start on a slow machine, sends no telemetry, and keeps the
    terminal to our own output: Prefect's console logs are shown with
    `--debug` or when PREFECT_LOGGING_LEVEL is set. Run logs still reach the
    Prefect API (and UI) in full.

    In that temporary-server mode the server is started here, in a thread,
    while this thread imports `warm_imports`; and flow-run heartbeats are off
    (unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set anywhere): they let a lasting
    server mark a crashed run, but this server ends with the process, and
    stopping the heartbeat thread delays the end of each flow run.
    """
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    updates: dict = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 90
    temporary_server = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
    if temporary_server and "heartbeat_frequency" not in get_current_settings().flows.model_fields_set:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None  # unless set (environment, profile, prefect.toml)
    quiet = not debug and "PREFECT_LOGGING_LEVEL" not in os.environ
    if quiet:
        # Left quiet until exit: the temporary server logs its shutdown at exit.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)
    with temporary_settings(updates=updates):
        if temporary_server:
            _start_temporary_server(warm_imports, quiet)
        yield


def _start_temporary_server(warm_imports: Sequence[str], quiet: bool = False) -> None:
    """Start Prefect's temporary server (as the first flow call would) while importing `warm_imports`.

    The server is a subprocess that takes a while to become healthy; the
    imports hold this process's interpreter meanwhile. The flow call then
    finds the server running (SubprocessASGIServer is one instance per
    process, and `start` does nothing once it has started).
    """
    server = _watched_server(quiet)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # re-raised in the calling thread
            failure.append(exc)

    # The thread sees this context's settings (the startup timeout) only through a copy of it. A daemon: an
    # interrupted start (Ctrl-C also stops the server process) must not hold the exit for the whole timeout.
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(start,), name="prefect-server-start", daemon=True
    )
    thread.start()
    try:
        for name in warm_imports:
            try:
                importlib.import_module(name)
            except Exception:  # only a head start: the stage that needs the module reports any problem
                pass
        thread.join()
    except BaseException:
        server.stop()
        thread.join(1)  # interrupted before the thread launched the server process: let it, then stop that
        server.stop()
        raise
    if failure:
        raise failure[0]


def _watched_server(quiet: bool = False) -> "SubprocessASGIServer":
    """Prefect's temporary server, each process of it in a process group of its own and watched by flows/_watchdog.py.

    Its own group: a Ctrl-C at the terminal (SIGINT to the foreground group)
    reaches the command only, which then stops the server itself, instead of
    the server dying mid-write while the command still sends it events. The
    watchdog stops it should the command be killed outright. With `quiet`,
    the server's own output (its errors while being stopped with events still
    to write, say) stays off the terminal, as Prefect's logs do.
    Prefect keeps one instance per port and its flow calls look it up by
    port, so an instance made here (port None, as theirs) is the one they use.
    """
    import prefect.server.api.server as prefect_server

    class WatchedServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self):  # type: ignore[no-untyped-def]
            # Prefect builds the command and calls its module's `subprocess.Popen`; only for this call, that
            # name gives the new process a session (and process group) of its own.
            prefect_server.subprocess = _OwnSession(quiet)  # type: ignore[assignment]
            try:
                process = super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = subprocess
            _WATCHDOG.watch(process.pid)
            return process

    return WatchedServer()


class _OwnSession:
    """The `subprocess` module, but `Popen` starts the process in a new session (output discarded if `quiet`)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __getattr__(self, name: str) -> object:
        return getattr(subprocess, name)

    def Popen(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: N802 (subprocess's name)
        extra: dict = {"start_new_session": True}
        if self.quiet:
            extra.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return subprocess.Popen(*args, **{**kwargs, **extra})


class ServerWatchdog:
    """This command's end of flows/_watchdog.py: the write end of a pipe that only this process holds.

    Started with the first server it is told about; when this process ends
    (kill -9 included), the pipe closes and the watchdog stops the servers.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self.process: subprocess.Popen | None = None

    def watch(self, pid: int) -> None:
        from flows._watchdog import start_time

        line = f"{pid} {start_time(pid)}\n".encode()
        for _ in range(2):  # a watchdog that already exited (its servers had all stopped): start another
            if self.fd is None:
                self._start()
            assert self.fd is not None
            try:
                os.write(self.fd, line)
                return
            except BrokenPipeError:
                os.close(self.fd)
                self.fd = None

    def _start(self) -> None:
        read, write = os.pipe()  # not inheritable: later children (the server itself) do not hold the write end
        try:
            # its own session: a hang-up of the terminal or a Ctrl-C to the command's group does not end it first
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("_watchdog.py")), str(read)],
                pass_fds=(read,), stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self.fd = write


_WATCHDOG = ServerWatchdog()


def exit_quickly(code: int) -> NoReturn:
    """`sys.exit(code)`, without the garbage collector's pass over every object at exit.

    With torch, Prefect, scikit-learn and matplotlib loaded, that pass is a
    visible share of a short command's wall time. Frozen objects are still
    freed by reference counting, atexit handlers still run and open files
    are still flushed; only objects in reference cycles are left to the
    operating system, as they may be at any interpreter exit.
    """
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
    """
    try:
        with sigterm_as_interrupt():
            return body()
    except PipelineError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
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


def check_data_first(data: "DataConfig") -> None:
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
        peek_shape(data)
    except PipelineError:
        raise
    except Exception:  # an I/O hiccup, say: the data stage (with its retry policy) reports it
        pass
