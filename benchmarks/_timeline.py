"""Run a command as `python -m` runs it, and write when its start-up steps happened (wall-clock seconds).

    python -m benchmarks._timeline OUT.json flows.train --run-dir runs/x

Marks, written to OUT.json at exit (time.time() values):

  wrapper        this wrapper's first line (the interpreter has started)
  server_start   `flows._server` launched `prefect server start` (absent: no temporary server)
  server_healthy its API first answered (a thread here polls it every 50 ms)
  session        `flows._cli.prefect_session` entered: imports done, the data checked
  waiting        the temporary server is waited for: the imports made meanwhile are done
  server_ready   the session's server is known to answer (the flow run starts next)
  flow_returned  the flow call returned (its own start and end are in Prefect's database)

The polling thread costs a little CPU, so `benchmarks.startup` times its
pairs without this wrapper and runs it once more per case for the profile.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Iterator


def _watch_health(api_url: str, marks: dict[str, float]) -> None:
    from flows._server import healthy

    while "server_healthy" not in marks:
        if healthy(api_url, timeout=1.0):
            marks["server_healthy"] = time.time()
        time.sleep(0.05)


def install(marks: dict[str, float]) -> None:
    """Wrap the server start and the Prefect session of the flows' command line to record their times."""
    import flows._cli as cli
    import flows._server as server

    start = server.ServerProcess.start

    def timed_start(self: server.ServerProcess) -> None:
        marks["server_start"] = time.time()
        start(self)
        threading.Thread(target=_watch_health, args=(self.api_url, marks), daemon=True).start()

    server.ServerProcess.start = timed_start  # type: ignore[method-assign]
    wait = server.TemporaryServer.wait_until_healthy

    def timed_wait(self: server.TemporaryServer, timeout: float) -> None:
        marks["waiting"] = time.time()
        wait(self, timeout)

    server.TemporaryServer.wait_until_healthy = timed_wait  # type: ignore[method-assign]
    session = cli.prefect_session

    @contextlib.contextmanager
    def timed_session(*args, **kwargs) -> Iterator[None]:
        marks["session"] = time.time()
        with session(*args, **kwargs):
            marks["server_ready"] = time.time()
            yield
        marks["flow_returned"] = time.time()

    cli.prefect_session = timed_session


def main(argv: list[str]) -> None:
    marks = {"wrapper": time.time()}
    out, module, *args = argv
    atexit.register(lambda: Path(out).write_text(json.dumps(marks), encoding="utf-8"))
    install(marks)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
