"""Hardening (#18): stale PIDs, SIGTERM, and one clear line for disk full, dropped overrides,
a --run-dir below a file and a checkpoint holding pickled objects."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas import ConfigError, load_config
from tasks.run.rundir import read_run_state
from tests.conftest import ROOT, ctrl_c_as_at_a_terminal, tiny_overrides


@pytest.fixture
def other_process():
    """A live process that is not this one (its PID is what a run.json may name)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def _resumable(folder: Path, **state) -> Path:
    from tasks.run.rundir import create_run_dir

    run = create_run_dir(folder, "x")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "run.json").write_text(json.dumps({"state": "running", **state}))
    return run


# --------------------------------------------------------------------------- stale PIDs


def test_a_run_records_its_process_start_time(tmp_path):
    from tasks.common.files import process_start_time
    from tasks.run.rundir import mark_running

    mark_running(tmp_path)
    state = read_run_state(tmp_path)
    assert state["pid"] == os.getpid()
    if sys.platform.startswith("linux"):
        assert state["pid_started"] == process_start_time(os.getpid()) is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start times come from /proc")
def test_a_reused_pid_does_not_block_resume(tmp_path, other_process):
    from tasks.common.files import process_start_time
    from tasks.run.rundir import open_run_dir_for_resume

    started = process_start_time(other_process.pid)
    run = _resumable(tmp_path / "run", pid=other_process.pid, pid_started=started + 1)  # another process's PID now
    assert open_run_dir_for_resume(run) == run


def test_a_live_run_is_refused_and_force_resumes_it_with_a_warning(tmp_path, other_process, capsys):
    from tasks.common.files import process_start_time
    from tasks.run.rundir import open_run_dir_for_resume

    run = _resumable(tmp_path / "run", pid=other_process.pid, pid_started=process_start_time(other_process.pid))
    with pytest.raises(ConfigError, match=rf"the run is still running \(pid {other_process.pid}\).*--force"):
        open_run_dir_for_resume(run)
    assert open_run_dir_for_resume(run, force=True) == run
    err = capsys.readouterr().err
    assert err.startswith("warning: --force: resuming") and f"(pid {other_process.pid})" in err


def test_a_run_json_without_a_start_time_falls_back_to_the_pid(tmp_path, other_process):
    from tasks.run.rundir import open_run_dir_for_resume

    with pytest.raises(ConfigError, match="still running"):
        open_run_dir_for_resume(_resumable(tmp_path / "run", pid=other_process.pid))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start times come from /proc")
def test_a_reused_pid_does_not_block_a_sweep(tmp_path, other_process):
    from tasks.common.files import process_start_time
    from tasks.run.rundir import running_elsewhere

    started = process_start_time(other_process.pid)
    assert running_elsewhere({"state": "running", "pid": other_process.pid, "pid_started": started}) == other_process.pid
    assert running_elsewhere({"state": "running", "pid": other_process.pid, "pid_started": started + 1}) is None
    assert running_elsewhere({"state": "failed", "pid": other_process.pid, "pid_started": started}) is None


# --------------------------------------------------------------------------- disk full


def test_disk_full_names_the_file_and_is_not_retried(tmp_path, monkeypatch, capsys):
    from flows._cli import run_command
    from tasks.common.files import write_json
    from tasks.common.retry import is_transient_error

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "metrics.json"

    def body() -> int:
        write_json(target, {"a": 1})
        return 0

    assert run_command(body, debug=False) == 1
    err = capsys.readouterr().err
    assert err == f"error: No space left on device (ENOSPC): {target}\n"
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        assert not is_transient_error(OSError(code, os.strerror(code), "x"))
    assert is_transient_error(OSError(errno.EIO, "Input/output error"))


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("order", [("device.threads=1", "device=cpu"), ("device=cpu", "device.threads=1")])
def test_device_shorthand_keeps_earlier_device_settings(order):
    device = load_config(None, list(order)).device
    assert (device.name, device.threads) == ("cpu", 1)


def test_device_shorthand_replaces_an_earlier_device_name():
    assert load_config(None, ["device.name=auto", "device=cpu"]).device.name == "cpu"


# --------------------------------------------------------------------------- run dir below a file


def test_run_dir_below_a_file_is_a_config_error(tmp_path):
    from tasks.run.rundir import create_run_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"--run-dir .*file/sub: cannot create it: .*file is a file, not a directory"):
        create_run_dir(tmp_path / "file" / "sub", "x")


# --------------------------------------------------------------------------- refused checkpoint


class _Payload:
    pass


def test_a_checkpoint_with_pickled_objects_is_refused_without_torchs_hint(tmp_path):
    import torch

    from tasks.train._checkpoint import FORMAT_VERSION, LAST, load_checkpoint

    torch.save({"format_version": FORMAT_VERSION, "x": _Payload()}, tmp_path / LAST)
    with pytest.raises(ConfigError) as info:
        load_checkpoint(tmp_path, 0, "hash")
    message = str(info.value)
    assert f"holds pickled Python objects ({_Payload.__module__}._Payload)" in message, message
    assert "refused" in message and "for safety" in message
    assert "weights_only" not in message and "likely succeed" not in message and "\n" not in message


# --------------------------------------------------------------------------- end to end (a Prefect server)


@pytest.mark.slow
def test_cli_messages_for_a_run_dir_below_a_file_a_live_run_and_a_pickled_checkpoint(
    prefect_api, tmp_path, monkeypatch, capsys, other_process
):
    import torch

    from flows.train import main
    from tasks.common.files import process_start_time, write_json

    monkeypatch.chdir(tmp_path)
    sets = [a for o in tiny_overrides(**{"train.epochs": "2"}) for a in ("--set", o)]
    (tmp_path / "file").write_text("x")
    assert main([*sets, "--run-dir", "file/sub"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --run-dir ") and "file is a file, not a directory" in err and "Traceback" not in err

    assert main([*sets, "--run-dir", "run"]) == 0
    write_json(tmp_path / "run" / "run.json", {
        "state": "running", "pid": other_process.pid, "pid_started": process_start_time(other_process.pid),
    })
    capsys.readouterr()
    assert main(["--resume", "run"]) == 2
    assert "the run is still running" in capsys.readouterr().err
    assert main(["--resume", "run", "--force"]) == 0
    assert "warning: --force: resuming" in capsys.readouterr().err
    assert read_run_state(tmp_path / "run")["state"] == "completed"
    assert main([*sets, "--run-dir", "run"]) == 2  # a new run into that folder: named as the pipeline's run
    assert f"holds an earlier run of the pipeline (state: completed); continue it with --resume {tmp_path / 'run'}" \
        in capsys.readouterr().err

    (tmp_path / "run2").mkdir()
    assert main([*sets, "--run-dir", "run2", "--set", "train.epochs=3"]) == 0
    write_json(tmp_path / "run2" / "run.json", {"state": "failed"})
    torch.save({"format_version": 1, "x": _Payload()}, tmp_path / "run2" / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["--resume", "run2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds pickled Python objects" in err and "likely succeed" not in err, err


def _env(prefect_api: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.pop("PREFECT_API_URL", None)
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start_training(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    overrides = tiny_overrides(**{"train.epochs": "100000", "train.early_stopping.enabled": "false"})
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.train", *(a for o in overrides for a in ("--set", o)), "--run-dir", "run"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training did not start")
        time.sleep(0.2)
    return process


@pytest.mark.slow
def test_sigterm_during_training_is_handled_like_ctrl_c(prefect_api, tmp_path):
    process = _start_training(tmp_path, _env(prefect_api))
    try:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, err
    assert err.rstrip().endswith("terminated (SIGTERM)\nresume it with: python -m flows.train --resume run"), err
    assert "Traceback" not in err
    state = read_run_state(tmp_path / "run")
    assert state["state"] == "failed" and state["error"]["type"] in ("Terminated", "TerminationSignal"), state


# --------------------------------------------------------------------------- the temporary server does not outlive the command


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    from flows._watchdog import start_time

    return {p for p in pids if start_time(p) != "-" and "Z" not in _state(p)}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _training_with_a_temporary_server(tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    """`python -m flows.train` in its own process group with no server configured, once training runs;
    the processes it started (the temporary server and its watchdog)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "PREFECT_API_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    overrides = tiny_overrides(**{"train.epochs": "100000", "train.early_stopping.enabled": "false"})
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.train", *(a for o in overrides for a in ("--set", o)), "--run-dir", "run"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    deadline = time.monotonic() + 280
    while not (tmp_path / "run" / "checkpoints" / "last.pt").is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"training did not start: {process.communicate()[1][-2000:]}")
        time.sleep(0.2)
    started = _descendants(process.pid)
    commands = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in started]
    assert any("prefect server start" in c for c in commands) and any("_watchdog.py" in c for c in commands), commands
    for pid, command in zip(started, commands):  # each in a process group of its own, not the command's
        assert os.getpgid(pid) == pid != process.pid, command
    return process, started


def _stderr_or_kill_group(process: subprocess.Popen, timeout: float = 60) -> str:
    """The command's stderr once it exits; its whole process group is killed if it has not within `timeout`."""
    try:
        return process.communicate(timeout=timeout)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the children in /proc")
def test_kill_9_of_the_command_stops_its_temporary_server_within_seconds(tmp_path):
    process, started = _training_with_a_temporary_server(tmp_path)
    process.kill()  # SIGKILL: no atexit, no signal handler runs in the command
    process.communicate()
    killed = time.monotonic()
    while _alive(started) and time.monotonic() - killed < 15:
        time.sleep(0.1)
    assert not _alive(started), f"left running after kill -9: {_alive(started)}"
    print(f"the temporary server and its watchdog were gone {time.monotonic() - killed:.1f}s after kill -9")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the children in /proc")
def test_ctrl_c_to_the_process_group_exits_130_and_leaves_no_process(tmp_path):
    process, started = _training_with_a_temporary_server(tmp_path)
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    err = _stderr_or_kill_group(process)
    seconds = time.monotonic() - sent
    assert process.returncode == 130, err
    assert err.rstrip().endswith("interrupted\nresume it with: python -m flows.train --resume run"), err
    assert "Traceback" not in err
    assert seconds < 30, f"took {seconds:.1f}s to exit after Ctrl-C"
    deadline = time.monotonic() + 10
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(started), f"left running after Ctrl-C: {_alive(started)}"
    assert read_run_state(tmp_path / "run")["state"] == "failed"


def test_a_run_dir_that_holds_files_is_refused_before_any_server_starts(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "PREFECT_API_URL"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect-home"))
    done = subprocess.run([sys.executable, "-m", "flows.train", "--run-dir", "full"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: --run-dir {tmp_path / 'full'}: already holds files; choose a new or empty directory"
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # no server was started for it
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "full").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the children in /proc")
def test_ctrl_c_twice_exits_130_without_a_traceback(tmp_path):
    """The second Ctrl-C lands while the first is cleaned up after, or in Prefect's exit-time flush."""
    process, started = _training_with_a_temporary_server(tmp_path)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    err = _stderr_or_kill_group(process)
    # 130, or (rarely, and not understood: the second signal landing in the interpreter's finalization) ended by
    # SIGINT itself, which a shell reports as 130 too; either way one line and no traceback.
    assert process.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "interrupted" in err
    deadline = time.monotonic() + 15
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(started), f"left running after two Ctrl-C: {_alive(started)}"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the children in /proc")
def test_ctrl_c_while_the_command_is_still_importing_exits_130_in_one_line(tmp_path):
    """Ctrl-C as soon as the temporary server is started, while torch and Prefect are still being imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "PREFECT_API_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.train", "--set", "device=cpu", "--run-dir", "run"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    deadline = time.monotonic() + 60
    started: set[int] = set()
    while not started and process.poll() is None and time.monotonic() < deadline:
        started = _descendants(process.pid)
        time.sleep(0.02)
    assert started, "no temporary server was started"
    os.killpg(process.pid, signal.SIGINT)
    err = _stderr_or_kill_group(process)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().splitlines()[-1] == "interrupted", err
    assert not (tmp_path / "run").exists()  # nothing written: the run folder comes after the imports
    deadline = time.monotonic() + 15
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(started), f"left running after Ctrl-C: {_alive(started)}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads start times from /proc")
def test_the_watchdog_stops_its_servers_when_the_pipe_closes_and_spares_a_reused_pid(tmp_path):
    from flows._server import ServerWatchdog
    from flows._watchdog import start_time

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        watchdog = ServerWatchdog()
        watchdog.watch(server.pid)
        # a PID whose start time differs from the recorded one is another process now: never signalled
        os.write(watchdog.fd, f"{bystander.pid} 1\n".encode())
        time.sleep(0.5)
        assert watchdog.process.poll() is None and server.poll() is None
        os.close(watchdog.fd)  # what the kernel does when the command dies, kill -9 included
        assert watchdog.process.wait(timeout=20) == 0
        assert server.wait(timeout=5) == -signal.SIGTERM
        assert bystander.poll() is None and start_time(bystander.pid) not in ("-", "")
    finally:
        for p in (server, bystander):
            p.kill()
            p.wait()


def test_the_watchdog_exits_by_itself_once_its_servers_stopped():
    from flows._server import ServerWatchdog

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    watchdog = ServerWatchdog()
    watchdog.watch(server.pid)
    time.sleep(3)  # exited, not yet collected: a zombie counts as stopped
    assert watchdog.process.wait(timeout=20) == 0  # the command still runs; the watchdog has nothing left to guard
    os.close(watchdog.fd)
    server.wait()
