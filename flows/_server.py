"""The Prefect server a command talks to: the one set up, a reusable local one, or a temporary one of its own.

    server = TemporaryServer(quiet=True)
    server.start()                      # `prefect server start` as a child; returns at once
    ...                                 # import torch and the stages, check the data meanwhile
    server.wait_until_healthy(90)       # then point Prefect's client at server.api_url
    server.stop()                       # SIGTERM, without waiting: the watchdog finishes it

The temporary server is started the way a user starts one, `prefect server
start` (Prefect's command line, through `python -m prefect`), on 127.0.0.1 and
a free port, configured only through Prefect's documented settings: no UI, no
telemetry, none of the scheduling services a server that lives for one command
has no use for (the same services Prefect's own temporary server leaves out),
logs at WARNING unless `--debug`. It keeps its database where Prefect's own
temporary server keeps it, `$PREFECT_HOME/prefect.db`, so every run stays
visible to a later `prefect server start` on the same PREFECT_HOME. It runs in
a session (and process group) of its own: a Ctrl-C at the terminal reaches
the command only, which stops the server itself once Prefect has sent its
last events; flows/_watchdog.py stops it when the command is killed outright.
Its output goes to a log file, whose last lines a failed start reports.

`python -m flows.server start` starts a reusable one instead (see
flows/server.py); its address is kept in `$PREFECT_HOME/pytorch-workflow-server.json`
and commands use it while it answers. This module imports only the standard
library, so a command can start its server before torch and Prefect load.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

LOG_TAIL_LINES = 12
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*: ")  # `sqlite3.OperationalError: ...`
STATE_FILE = "pytorch-workflow-server.json"  # in PREFECT_HOME: the reusable server of `python -m flows.server`

# Prefect settings of the temporary server: the services of Prefect's own temporary server (task runs,
# events, logs, automations) and none of the loops that schedule, expire or clean up runs over time; no block
# type registration at start (it imports every installed Prefect collection, prefect-dask's Dask among them;
# the pipeline saves no blocks, and a later `prefect server start` on the same database registers them).
TEMPORARY_SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_ENABLED": "false",
}


class ServerStartError(RuntimeError):
    """The server did not answer: its exit code or the time waited, the last lines of its output, where its log is."""


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect resolves it by default: the environment's, else ~/.prefect."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never through a proxy


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether the Prefect API at `api_url` answers its health check."""
    try:
        with _DIRECT.open(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, reset, timed out, not HTTP yet
        return False


class ServerProcess:
    """`prefect server start` as a child process in a session of its own, its output in `log_path`."""

    def __init__(self, settings: dict[str, str], log_path: Path | None, port: int | None = None) -> None:
        self.settings = settings
        self.log_path = log_path  # None: the server's output goes to this process's terminal
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Launch the server; returns at once (`wait_until_healthy` waits)."""
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, **self.settings}
        env.pop("PREFECT_API_URL", None)  # the server's own client settings do not matter; keep it from calling another
        env.setdefault("PREFECT_UI_API_URL", self.api_url)  # its UI (when on) calls this server, not a profile's
        # Started in Prefect's home, not the working directory: its database migrations (alembic) put "." first on
        # its import path, and a numpy.py where the command runs would be imported by the server. A relative
        # PREFECT_HOME is made absolute, so that it names the same folder there.
        home = Path(env.get("PREFECT_HOME") or prefect_home()).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = str(home)
        log: IO[bytes] | int | None = None
        if self.log_path is not None:
            log = open(self.log_path, "ab")
        try:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT if log else None,
                start_new_session=True, close_fds=True, cwd=home,
            )
        finally:
            if log is not None:
                log.close()

    def wait_until_healthy(self, timeout: float) -> None:
        """Return once the API answers; a ServerStartError when the process exits or `timeout` passes first."""
        assert self.process is not None
        deadline = self.started_at + timeout
        while True:
            if healthy(self.api_url, timeout=1.0):
                return
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"exited with code {code}"))
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(self._failure(f"did not answer within {timeout:g} s"))
            time.sleep(0.05)

    def port_was_taken(self) -> bool:
        """Whether the server exited because its port was taken (between our check and its bind)."""
        return self.process is not None and self.process.poll() is not None and "already in use" in self.log_tail()

    def stop(self) -> None:
        """SIGTERM to the server's process group; does not wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except OSError:
                pass

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_bytes()[-20_000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(line.rstrip() for line in text.splitlines()[-lines:] if line.strip())

    def _failure(self, what: str) -> str:
        """One line: what happened, the error the server logged, its last lines, where the whole log is."""
        lines = self.log_tail(400).splitlines()
        cause = next((line.strip() for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None)
        tail = " | ".join(line.strip() for line in lines[-2:])
        said = (f": {cause}" if cause else "") + (f"; its output ends: {tail}" if tail else "")
        where = f" (whole log: {self.log_path})" if self.log_path is not None else " (its output is above)"
        return f"Prefect's server (prefect server start, {self.api_url}) {what}{said}{where}"


class TemporaryServer:
    """A server for this command only, watched by flows/_watchdog.py; `stop` (or the watchdog) ends it."""

    def __init__(self, quiet: bool = True) -> None:
        self.quiet = quiet
        self.log_path: Path | None = None
        if quiet:
            handle, name = tempfile.mkstemp(prefix="prefect-server-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        settings = dict(TEMPORARY_SERVER_SETTINGS)
        settings["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING" if quiet else os.environ.get(
            "PREFECT_SERVER_LOGGING_LEVEL", "INFO"
        )
        self.server = ServerProcess(settings, self.log_path)
        self.keep_log = False

    @property
    def api_url(self) -> str:
        return self.server.api_url

    def start(self) -> None:
        self.server.start()
        assert self.server.process is not None
        WATCHDOG.watch(self.server.process.pid)
        atexit.register(self.stop)

    def wait_until_healthy(self, timeout: float) -> None:
        """Wait for the API; start again on another port if the one chosen was taken meanwhile (twice at most).

        Once it answers, its log file is unlinked (the server writes on into the unlinked file), so none is
        left behind however the command ends; a failed start keeps it, for the error message to point to.
        """
        for attempt in range(3):
            try:
                self.server.wait_until_healthy(timeout)
                self._remove_log()
                return
            except ServerStartError:
                if attempt == 2 or not self.server.port_was_taken():
                    self.keep_log = True
                    raise
            self.server = ServerProcess(self.server.settings, self.log_path)
            self.start()

    def running(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def stop(self) -> None:
        """Ask the server to stop and return: the watchdog sends SIGKILL if it has not exited within seconds."""
        self.server.stop()
        if not self.keep_log:
            self._remove_log()

    def _remove_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- this process's temporary server

_STARTED: list[TemporaryServer] = []  # at most one: the temporary server this process started


def start_early(debug: bool, data_path: str | os.PathLike | None = None) -> None:
    """At the top of a command that will run a flow, before torch and Prefect import: start the temporary server.

    Not when the environment or the active Prefect profile names a server
    (PREFECT_API_URL) or turns the temporary server off, when a reusable
    server answers, or when `data_path` (the run's data file or folder) does
    not exist: the command's data check reports that before any server.
    `flows._cli.prefect_session` decides for good once Prefect's settings are
    loaded, and stops this server if they name another.
    """
    if data_path is not None and not Path(data_path).exists():
        return
    if not _settings_name_a_server() and reusable_server_url() is None:
        temporary_server(quiet=not debug)


def temporary_server(quiet: bool) -> TemporaryServer:
    """This process's temporary server, started on first use (again if it has exited)."""
    if not (_STARTED and _STARTED[0].running()):
        server = TemporaryServer(quiet)
        server.start()
        _STARTED[:] = [server]
    return _STARTED[0]


def server_started() -> bool:
    """Whether this process has started a temporary server (and it has not been stopped)."""
    return bool(_STARTED)


def stop_temporary_server() -> None:
    """Stop this process's temporary server, if it started one (without waiting for it to exit)."""
    while _STARTED:
        _STARTED.pop().stop()


def _settings_name_a_server() -> bool:
    """A quick look (no Prefect import) at the environment and the active profile: a server, or none allowed."""
    settings = dict(os.environ)
    try:
        import tomllib
    except ImportError:  # Python 3.10: the environment only
        tomllib = None
    if tomllib is not None:
        path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser()
        try:
            profiles = tomllib.loads(path.read_text(encoding="utf-8"))
            active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
            settings = {**{k: str(v) for k, v in profiles.get("profiles", {}).get(active, {}).items()}, **settings}
        except (OSError, ValueError, AttributeError):
            pass
    ephemeral = settings.get("PREFECT_SERVER_EPHEMERAL_ENABLED") or settings.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "")
    return bool(settings.get("PREFECT_API_URL")) or ephemeral.strip().lower() in ("false", "0", "no", "off")


# --------------------------------------------------------------------------- the reusable local server


def reusable_server_url(home: Path | None = None) -> str | None:
    """The API URL of the server `python -m flows.server start` left running on this PREFECT_HOME, if it answers."""
    state = read_state(home)
    if state is None or not process_alive(state.get("pid"), state.get("started")):
        return None
    url = state.get("api_url")
    return url if isinstance(url, str) and healthy(url, timeout=0.5) else None


def read_state(home: Path | None = None) -> dict | None:
    from schemas.errors import ConfigError
    from schemas.reading import read_json

    path = (home or prefect_home()) / STATE_FILE
    try:
        state = read_json(path, "server state file", ConfigError, 1 << 20)  # a FIFO there: no server, not a hang
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def process_alive(pid: object, started: object) -> bool:
    """Whether `pid` is the live process that started at `started` (/proc start time; "" where unknown)."""
    from flows._watchdog import alive

    return isinstance(pid, int) and pid > 0 and alive(pid, str(started or ""))


# --------------------------------------------------------------------------- the watchdog's end of the pipe


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
            # Its own session: a hang-up of the terminal or a Ctrl-C to the command's group does not end it first.
            # None of the command's output streams: a pipe reading them (`| tee`) ends with the command.
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("_watchdog.py")), str(read)],
                pass_fds=(read,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self.fd = write


WATCHDOG = ServerWatchdog()
