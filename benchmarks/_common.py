"""Helpers the benchmark modules share: memory sampling, the machine line, spans, a running Prefect server."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; elsewhere the peak so far, a poor substitute)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's high-water RSS (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakRSS:
    """The peak RSS of this process while the block runs, sampled every `interval` seconds in a thread.

    `peak_mib` is the highest RSS seen; `delta_mib` is that minus the RSS at entry: the extra
    memory the block needed (freed memory that the allocator keeps counts as in use at entry).
    A block shorter than the interval is sampled at entry and exit only.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start = self.peak = 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def machine_line() -> str:
    """Cores, CPU model, Python and torch versions, for a report's header."""
    import torch

    from tasks.device import available_cores

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (
        f"{available_cores()} usable cores ({os.cpu_count()} logical), {cpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def span(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def emit_report(report: str, output: Path | None) -> None:
    """Print a benchmark's markdown report, and write it to `output` when given (--output)."""
    print(report)
    if output is not None:
        output.write_text(report, encoding="utf-8")


def timed_stages(times: dict[str, float], **names: str) -> Any:
    """The recipe's plain stages (tasks.recipe.Stages), the named ones timed: `select_device="probe"` puts that
    stage's seconds in `times["probe"]` each time it runs."""
    from tasks.recipe import PLAIN, Stages

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            value = fn(*args, **kwargs)
            times[name] = time.perf_counter() - start
            return value

        return call

    return Stages(**{stage: timed(name, getattr(PLAIN, stage)) for stage, name in names.items()})


@contextlib.contextmanager
def reusable_server(env: dict[str, str]) -> Iterator[str]:
    """`python -m flows.server start --port 0` on `env`'s PREFECT_HOME for the block; yields its API URL."""
    from flows._server import read_state

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "flows.server", "start", "--port", "0"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=300)
    try:
        state = read_state(Path(env["PREFECT_HOME"]))
        assert state is not None, "python -m flows.server start recorded no server"
        yield state["api_url"]
    finally:
        subprocess.run([sys.executable, "-m", "flows.server", "stop"], cwd=root, env=env, capture_output=True,
                       timeout=120)
