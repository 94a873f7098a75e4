"""The Prefect server a command talks to: started through Prefect's command line and settings only, never
for a command that runs no flow, gone when the command ends; a failed start says why; a reusable server
is used by later commands until it is stopped."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_overrides

OURS = ("flows/_cli.py", "flows/_server.py", "flows/server.py", "flows/_watchdog.py", "flows/train.py", "flows/sweep.py")


def _private_prefect_names(path: Path) -> list[str]:
    """`prefect...` imports in `path` that name a private module or object (a part starting with `_`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
            names = [*node.module.split("."), *(alias.name for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [part for alias in node.names if alias.name.split(".")[0] == "prefect" for part in alias.name.split(".")]
        else:
            continue
        if any(name.startswith("_") for name in names):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_the_server_is_reached_through_prefects_public_api_only():
    for name in OURS:
        path = ROOT / name
        assert _private_prefect_names(path) == [], name
        text = path.read_text(encoding="utf-8")
        # Prefect's internal environment switches, its server class, a patched module attribute
        for internal in ("PREFECT__", "SubprocessASGIServer", "prefect.server.api", "_run_uvicorn_command"):
            assert internal not in text, f"{name} uses {internal}"
    bad = ROOT / "flows" / "_bad_example.py"
    try:  # the check itself finds a private name
        bad.write_text("from prefect.server.api.server import _memoize_block_auto_registration\nimport prefect._internal\n")
        assert len(_private_prefect_names(bad)) == 2
    finally:
        bad.unlink()


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT), **extra)
    return env


def _with_environment(name: str, value: str) -> set[int]:
    """Live processes whose environment has NAME=VALUE (Linux /proc; our own processes only)."""
    needle = f"{name}={value}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0") and "Z" not in _state(int(environ.parent.name)):
                found.add(int(environ.parent.name))
        except OSError:
            continue
    return found - {os.getpid()}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("module, args, code", [
    ("flows.train", ["--help"], 0),
    ("flows.train", ["--print-config"], 0),
    ("flows.train", ["--set", "train.epochz=3"], 2),
    ("flows.sweep", ["--config", str(ROOT / "configs" / "sweep_digits.yaml"), "--print-config"], 0),
    ("flows.sweep", ["--config", str(ROOT / "configs" / "sweep_digits.yaml"), "--set", "n_trialz=3"], 2),
])
def test_a_command_that_runs_no_flow_answers_on_the_schemas_alone_and_starts_no_server(tmp_path, module, args, code):
    home = tmp_path / "prefect-home"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args], cwd=tmp_path, env=_env(home),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "prefect", "pandas"} & imported, "answered after importing torch or Prefect"
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith("error: ") and "did you mean" in errors[0], errors
    assert not (home / "prefect.db").exists() and not _with_environment("PREFECT_HOME", str(home))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes in /proc")
def test_after_a_run_no_server_or_watchdog_it_started_is_left(tmp_path):
    home = tmp_path / "prefect-home"
    sets = [a for o in tiny_overrides() for a in ("--set", o)]
    result = subprocess.run([sys.executable, "-m", "flows.train", *sets, "--run-dir", "run"], cwd=tmp_path,
                            env=_env(home), capture_output=True, text=True, timeout=300)
    ended = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout  # a quiet console: Prefect and its server say nothing, the run's own lines only
    assert [line for line in result.stderr.splitlines() if not line.startswith("evaluate: ")] == [], result.stderr
    assert (home / "prefect.db").is_file()  # the run went through a temporary server on PREFECT_HOME's database
    while _with_environment("PREFECT_HOME", str(home)) and time.monotonic() - ended < 10:
        time.sleep(0.1)
    assert not _with_environment("PREFECT_HOME", str(home)), "a server or watchdog outlived the command"
    print(f"gone {time.monotonic() - ended:.1f}s after the command returned")


@pytest.mark.slow
def test_a_server_that_cannot_start_is_named_with_its_error_and_log(tmp_path):
    home = tmp_path / "prefect-home"
    env = _env(home, PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")
    sets = [a for o in tiny_overrides() for a in ("--set", o)]
    result = subprocess.run([sys.executable, "-m", "flows.train", *sets, "--run-dir", "run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    line, = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: Prefect's server (prefect server start, http://127.0.0.1:") and "exited with code" in line
    assert "unable to open database file" in line  # the server's own error
    log = Path(line.rsplit("(whole log: ", 1)[1].rstrip(")"))
    try:
        assert "Traceback" in log.read_text()
    finally:
        log.unlink()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the children in /proc")
def test_a_reusable_server_serves_later_commands_until_stopped(tmp_path):
    from tests.test_signals import _descendants

    env = _env(tmp_path / "prefect-home")

    def server(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.server", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    assert server("status").returncode == 1
    started = server("start", "--port", "0")
    assert started.returncode == 0, started.stderr
    try:
        state = json.loads((tmp_path / "prefect-home" / "pytorch-workflow-server.json").read_text())
        assert server("status").returncode == 0 and "already running" in server("start", "--port", "0").stdout
        sets = [a for o in tiny_overrides() for a in ("--set", o)]
        command = subprocess.Popen([sys.executable, "-m", "flows.train", *sets, "--run-dir", "run"], cwd=tmp_path,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children = set()
        while command.poll() is None:
            children |= {Path(f"/proc/{p}/cmdline").read_bytes() for p in _descendants(command.pid)
                         if Path(f"/proc/{p}/cmdline").exists()}
            time.sleep(0.1)
        assert command.returncode == 0, command.stderr.read()
        assert not [c for c in children if b"server start" in c or b"_watchdog" in c], children  # no server of its own
        request = urllib.request.Request(f"{state['api_url']}/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.loads(response.read())
        assert [run["name"] for run in runs] == ["iris-test"] and runs[0]["state_type"] == "COMPLETED"
    finally:
        stopped = server("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert server("status").returncode == 1
    assert not _with_environment("PREFECT_HOME", str(tmp_path / "prefect-home"))
