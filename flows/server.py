"""A reusable local Prefect server: started once, used by every later command, stopped by a command.

    python -m flows.server start            # in the background, with the UI, on http://127.0.0.1:4200
    python -m flows.server start --port 0   # any free port
    python -m flows.server status
    python -m flows.server stop

Without it, each `python -m flows.train` or `flows.sweep` starts a temporary
Prefect server of its own and stops it when it ends, which costs seconds per
command. `start` runs Prefect's own `prefect server start` in the background
(its own session, so closing the terminal does not stop it; no telemetry; its
output in `$PREFECT_HOME/pytorch-workflow-server.log`) and records where it
listens in `$PREFECT_HOME/pytorch-workflow-server.json`. While it answers,
the commands use it instead of starting one (unless PREFECT_API_URL names
another server), and their runs appear in its UI as they happen. It keeps
the database the temporary servers use, `$PREFECT_HOME/prefect.db`, so
earlier runs are there too. It runs until `stop` (or the machine restarts):
nothing else stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from flows._server import (
    STATE_FILE, ServerProcess, ServerStartError, free_port, healthy, prefect_home, process_alive, read_state,
)

LOG_FILE = "pytorch-workflow-server.log"
DEFAULT_PORT = 4200  # Prefect's own default
STOP_SECONDS = 15.0


def start(port: int, timeout: float) -> int:
    home = prefect_home()
    running = _running(home)
    if running is not None:
        print(f"a Prefect server is already running at {_ui(running['api_url'])} (pid {running['pid']})")
        return 0
    home.mkdir(parents=True, exist_ok=True)
    server = ServerProcess({"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, home / LOG_FILE, port or free_port())
    if healthy(server.api_url, timeout=0.5):
        print(f"error: port {server.port} already answers as a Prefect server that this command did not start; "
              f"use it with PREFECT_API_URL={server.api_url}, or choose another port with --port", file=sys.stderr)
        return 1
    server.start()
    try:
        server.wait_until_healthy(timeout)
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from flows._watchdog import start_time

    assert server.process is not None
    state = {"pid": server.process.pid, "started": start_time(server.process.pid), "api_url": server.api_url,
             "log": str(server.log_path)}
    _write_state(home, state)
    print(f"Prefect server running at {_ui(server.api_url)} (pid {server.process.pid}); "
          "python -m flows.train and flows.sweep use it from now on")
    if os.environ.get("PREFECT_API_URL"):
        print(f"note: PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): commands use that server instead")
    print("stop it with: python -m flows.server stop")
    return 0


def stop() -> int:
    home = prefect_home()
    state = read_state(home)
    if state is None:
        print("no server started by python -m flows.server is running")
        return 0
    pid = state.get("pid")
    if process_alive(pid, state.get("started")):
        assert isinstance(pid, int)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while process_alive(pid, state.get("started")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid, state.get("started")):
            _signal_group(pid, signal.SIGKILL)
        print(f"stopped the Prefect server at {_ui(str(state.get('api_url')))} (pid {pid})")
    else:
        print("the server had already stopped")
    (home / STATE_FILE).unlink(missing_ok=True)
    return 0


def status() -> int:
    running = _running(prefect_home())
    if running is None:
        print("no server started by python -m flows.server is running; commands start a temporary one each")
        return 1
    print(f"running at {_ui(running['api_url'])} (pid {running['pid']}; log {running.get('log')})")
    return 0


def _running(home: Path) -> dict | None:
    """The recorded server, when its process is alive and it answers; a stale record is removed."""
    state = read_state(home)
    if state is None:
        return None
    if process_alive(state.get("pid"), state.get("started")) and healthy(str(state.get("api_url")), timeout=2.0):
        return state
    if not process_alive(state.get("pid"), state.get("started")):
        (home / STATE_FILE).unlink(missing_ok=True)
    return None


def _write_state(home: Path, state: dict) -> None:
    temporary = home / f".{STATE_FILE}.tmp"
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, home / STATE_FILE)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the server leads a session (and process group) of its own
    except OSError:
        pass


def _ui(api_url: str) -> str:
    return api_url.removesuffix("/api")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.server",
        description="A reusable local Prefect server (with its UI) that every later command uses, until stopped.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    started = commands.add_parser("start", help="start it in the background (no-op if it runs)")
    started.add_argument("--port", type=int, default=DEFAULT_PORT,
                         help="port on 127.0.0.1 (0: any free one; default %(default)s)")
    started.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to answer (default %(default)s)")
    commands.add_parser("stop", help="stop it")
    commands.add_parser("status", help="say whether it runs, and where (exit 1 if not)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "start":
        return start(args.port, args.timeout)
    return stop() if args.command == "stop" else status()


if __name__ == "__main__":
    sys.exit(main())
