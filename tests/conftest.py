"""Shared fixtures. Prefect gets a private home; flow tests share one harness."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

# Before anything imports prefect: a private, throw-away Prefect home, and no telemetry.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pw-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Device decisions and other caches go to a throw-away directory, not the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="pw-cache-")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One Prefect test server for the whole session; returns its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process group we started, by its PID: SIGINT, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def prefect_client_on(api: str):
    """Point this process's Prefect client at `api` (the session's test harness may point elsewhere)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free loopback port with its own PREFECT_HOME, for the deployment and UI tests.

    Yields SimpleNamespace(api, ui, env): env is what a client process needs. Its UI calls this API
    (PREFECT_SERVER_API_PORT), and its scheduler looks for due schedules every 2 s (not 60).
    """
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
        PREFECT_SERVER_API_PORT=str(port), PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    log = open(home / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Prefect server did not become healthy in 120 s"
            time.sleep(0.5)
        yield SimpleNamespace(api=api, ui=f"http://127.0.0.1:{port}", env={**env, "PREFECT_API_URL": api})
    finally:
        stop_process_group(process)
        log.close()
        assert process.poll() is not None, "the Prefect server is still running"


@pytest.fixture(scope="session")
def served_deployments(prefect_server, tmp_path_factory):
    """`python -m deployments.serve` (every deployment) against `prefect_server`, from a fresh folder.

    Yields SimpleNamespace(api, ui, env, workdir): runs write runs/ and sweeps/ under `workdir`. The
    runner looks for runs every second (not 10).
    """
    from deployments.definitions import DEPLOYMENTS

    workdir = tmp_path_factory.mktemp("served")
    env = {**prefect_server.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(workdir / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + 120
        while True:
            with prefect_client_on(prefect_server.api), get_client(sync_client=True) as client:
                names = {d.name for d in client.read_deployments()}
            if {spec.name for spec in DEPLOYMENTS} <= names:
                break
            assert process.poll() is None, (workdir / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "deployments were not registered in 120 s"
            time.sleep(1)
        yield SimpleNamespace(**vars(prefect_server), workdir=workdir)
    finally:
        stop_process_group(process)
        log.close()


@pytest.fixture(autouse=True)
def lines_echo_to_the_terminal():
    """Each test starts with `say` writing to stderr; a test that stands in for a deployment run turns it off."""
    from tasks.common.log import echo_to_terminal

    echo_to_terminal(True)
    yield
    echo_to_terminal(True)


@pytest.fixture
def served(served_deployments):
    """The served deployments, with this process's Prefect client pointed at their server for the test."""
    with prefect_client_on(served_deployments.api):
        yield served_deployments


@pytest.fixture
def run_cli(prefect_api: str, tmp_path: Path):
    """Run `python -m <module> args...` against the session's Prefect server.

    Returns the CompletedProcess; the working directory is a fresh tmp dir.
    """

    def run(module: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
        env["PREFECT_API_URL"] = prefect_api
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def no_prefect_session(*args, **kwargs):
    """Stands in for a flow module's `prefect_session` where a test asserts no server is started."""
    raise AssertionError("Prefect's session (and server) was started")


def ctrl_c_as_at_a_terminal() -> None:
    """A `preexec_fn` for a child that a test stops with SIGINT: SIGINT at its default, as a terminal's
    foreground command has it. A test run started in the background by a shell without job control
    (`nohup pytest &`, some CI runners) has SIGINT ignored, and its children would inherit that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_overrides(**extra: str) -> list[str]:
    """Overrides for a seconds-long run on iris."""
    sets = {
        "name": "iris-test",
        "data.source.name": "iris",
        "model.hidden_sizes": "[16]",
        "train.epochs": "5",
        "train.batch_size": "16",
        "train.progress": "false",
        "optimizer.lr": "0.01",
        "device": "cpu",
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture
def tiny_config():
    from schemas.loading import load_config

    return load_config(None, tiny_overrides())


def prepared(config, device=None):
    """The data and fresh training parts of `config`, as train_flow builds them (plain functions, no Prefect run)."""
    import torch

    from schemas.recipe import ModelSetup
    from tasks.data import prepare_data
    from tasks.model import build_model

    data = prepare_data(config.data, seed=config.seed)
    parts = build_model(ModelSetup.of(config), data.spec, device or torch.device("cpu"))
    return data, parts


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convolutions on a shared 2-core machine: one thread avoids oversubscription (many times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
