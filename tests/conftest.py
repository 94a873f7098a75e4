"""Shared fixtures. Prefect gets a private home; flow tests share one harness."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
