"""The flows end to end, under one session-scoped Prefect server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.data
from schemas import DataError, load_config
from tasks.bundle import load_model
from tasks.run.rundir import read_run_state
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _train(config, run_dir: Path, **kwargs):
    from flows.train import train_flow

    return train_flow(config=config, run_dir=str(run_dir), **kwargs)


def test_train_flow_writes_a_complete_run(prefect_api, tmp_path, tiny_config):
    summary = _train(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    assert read_run_state(run)["state"] == "completed"
    assert load_config(run / "config.yaml") == tiny_config
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"accuracy", "macro_f1", "macro_precision", "macro_recall"}
    assert set(metrics["baseline"]) == set(metrics["test"])
    assert metrics["test"] == summary.test
    with open(run / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == summary.epochs_run == 5
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "lr"} <= set(history[0])
    bundle = load_model(run / "model")
    assert bundle.evaluation["metrics"] == metrics["test"]
    assert summary.bundle == str(run / "model")


def test_same_seed_twice_gives_identical_metrics(prefect_api, tmp_path, tiny_config):
    a = _train(tiny_config, tmp_path / "a")
    b = _train(tiny_config, tmp_path / "b")
    assert a.test == b.test
    assert (tmp_path / "a" / "history.csv").read_text().splitlines()[1].split(",")[1:3] == (
        tmp_path / "b" / "history.csv"
    ).read_text().splitlines()[1].split(",")[1:3]
    weights_a = (tmp_path / "a" / "model" / "weights.safetensors").read_bytes()
    weights_b = (tmp_path / "b" / "model" / "weights.safetensors").read_bytes()
    assert weights_a == weights_b


def test_task_runs_have_meaningful_names(prefect_api, tmp_path, tiny_config):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train import train_flow

    state = train_flow(config=tiny_config, run_dir=str(tmp_path / "run"), return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = {r.name for r in runs}
    assert flow_run.name == "iris-test"
    assert {"prepare-data[iris]", "build-model[mlp]"} <= names
    assert any(n.startswith("train-model") for n in names)
    assert any(n.startswith("save-model") for n in names)


def test_transient_io_error_is_retried(prefect_api, tmp_path, monkeypatch):
    real = tasks.data.load_raw
    calls = []

    def flaky(source, *config):
        calls.append(source)
        if len(calls) == 1:
            raise ConnectionResetError("network share hiccup")
        return real(source, *config)

    monkeypatch.setattr(tasks.data, "load_raw", flaky)
    config = load_config(None, tiny_overrides(**{"data.retry.delay_seconds": "0"}))
    summary = _train(config, tmp_path / "run")
    assert len(calls) == 2 and summary.test["accuracy"] > 0


def test_data_error_fails_at_once_and_marks_the_run_failed(prefect_api, tmp_path, monkeypatch):
    csv_path = tmp_path / "t.csv"
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1, 0, 1]}).to_csv(csv_path, index=False)
    real = tasks.data.load_raw
    calls = []
    monkeypatch.setattr(tasks.data, "load_raw", lambda s, *c: calls.append(s) or real(s, *c))
    config = load_config(
        None,
        tiny_overrides(**{"data.source": f"{{kind: csv, path: {csv_path}, target: label}}", "data.retry.retries": "3",
                          "data.retry.delay_seconds": "0", "device.threads": "1"}),  # 1: no thread probe peeks first
    )
    # The early check (the flow's first step, before any task or folder) sees this one ...
    with pytest.raises(DataError, match="target column 'label' not found; columns are: a, b"):
        _train(config, tmp_path / "run")
    assert calls == [] and not (tmp_path / "run").exists()
    # ... and a problem only the data stage sees fails that stage at once, the run marked failed.
    monkeypatch.setattr("flows.train.check_data_first", lambda data: None)
    with pytest.raises(DataError, match="target column 'label' not found; columns are: a, b"):
        _train(config, tmp_path / "run")
    assert len(calls) == 1  # never retried
    state = read_run_state(tmp_path / "run")
    assert state["state"] == "failed"
    assert state["error"]["type"] == "DataError" and "label" in state["error"]["message"]
    assert not (tmp_path / "run" / "model").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


# --------------------------------------------------------------------------- command line


def test_cli_default_run_reaches_095_accuracy(run_cli, tmp_path):
    result = run_cli("flows.train")
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-digits-mlp")
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.95
    assert metrics["baseline"]["accuracy"] < 0.2
    out = result.stdout
    assert "device    cpu" in out and "accuracy" in out and f"bundle    {runs[0] / 'model'}" in out
    assert "epoch   1/200" in result.stderr
    assert "Traceback" not in result.stderr and "prefect" not in result.stderr.lower()


def test_cli_print_config(capsys, tmp_path, monkeypatch):
    from flows.train import main

    monkeypatch.chdir(tmp_path)
    assert main(["--print-config", "--set", "optimizer.lr=0.5", "--set", "model.kind=cnn"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "kind: cnn" in out
    assert not (tmp_path / "runs").exists()


def test_cli_help(capsys):
    from flows.train import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--set", "--run-dir", "--print-config", "--debug"):
        assert option in out


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--set", "train.epochs=-1"], "train.epochs = -1", 2),
        (["--config", "nope.yaml"], "config file not found: /", 2),
        (["--set", "device=cuda:7"], "device.name = 'cuda:7': not available on this machine; available: cpu", 2),
        (["--set", "data.source={kind: npz, path: none.npz}"], "data file not found: /", 3),
    ],
)
def test_cli_bad_input_exits_nonzero_with_one_line(prefect_api, capsys, tmp_path, monkeypatch, args, message, code):
    from flows.train import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert "Traceback" not in err
    assert list(tmp_path.glob("runs/*/model")) == []


def test_cli_bad_config_in_a_real_process(run_cli, tmp_path):
    result = run_cli("flows.train", "--set", "optimizer.lrr=1")
    assert result.returncode == 2
    assert result.stderr == (
        "error: invalid config: optimizer.lrr: unknown key (did you mean optimizer.lr?); "
        "expected one of: name, lr, betas, weight_decay\n"
    )
    assert not (tmp_path / "runs").exists()


def test_cli_bad_data_names_the_column_and_debug_shows_traceback(run_cli, capsys, tmp_path, monkeypatch):
    csv_path = tmp_path / "t.csv"
    # Text labels with data.task=regression: a data error of the stage's (the early check judges the
    # columns and the split, not whether a regression target is numeric).
    pd.DataFrame({"a": ["x", "y", "z"] * 4, "b": [1.0] * 12, "label": ["p", "q"] * 6}).to_csv(csv_path, index=False)
    args = ["--set", f"data.source={{kind: csv, path: {csv_path}, target: label}}", "--set", "data.task=regression",
            "--run-dir"]
    result = run_cli("flows.train", *args, "run")
    assert result.returncode == 3
    assert "target 'label' is not numeric (object); regression needs numbers" in result.stderr
    assert "Traceback" not in result.stderr
    assert read_run_state(tmp_path / "run")["state"] == "failed"
    assert not (tmp_path / "run" / "model").exists()

    from flows.train import main

    monkeypatch.chdir(tmp_path)
    assert main([*args, "run2", "--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_cli_train_then_predict_matches_the_bundle(run_cli, tmp_path):
    overrides = [a for o in tiny_overrides() for a in ("--set", o)]
    trained = run_cli("flows.train", *overrides, "--run-dir", "run")
    assert trained.returncode == 0, trained.stderr
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame.sample(12, random_state=0)
    shuffled = frame[list(reversed(frame.columns))]  # other column order, plus the target column
    shuffled.to_csv(tmp_path / "in.csv", index=False)
    result = run_cli("flows.predict", "--model", "run/model", "--input", "in.csv", "--output", "out.csv")
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "out.csv")
    bundle = load_model(tmp_path / "run" / "model")
    expected = bundle.predict_frame(frame)
    assert list(predicted.columns) == ["prediction", "proba_setosa", "proba_versicolor", "proba_virginica"]
    assert list(predicted["prediction"]) == list(expected["prediction"])
    assert np.allclose(predicted.iloc[:, 1:].to_numpy(), expected.iloc[:, 1:].to_numpy(), atol=1e-6)



def test_cli_predict_missing_column(prefect_api, capsys, tmp_path, monkeypatch, tiny_config):
    from sklearn.datasets import load_iris

    from flows.predict import main

    _train(tiny_config, tmp_path / "run")
    frame = load_iris(as_frame=True).frame.head(5)
    frame.drop(columns=["petal width (cm)"]).to_csv(tmp_path / "missing.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "run/model", "--input", "missing.csv", "--output", "m.csv"]) == 3
    err = capsys.readouterr().err
    assert "missing feature column(s): petal width (cm)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.csv").exists()


def test_runs_started_together_get_their_own_directories(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tasks.run.rundir import create_run_dir

    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: create_run_dir(None, "same", root=tmp_path), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)


def test_run_dir_that_holds_files_is_refused(tmp_path):
    from schemas import ConfigError
    from tasks.run.rundir import create_run_dir

    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="already holds files"):
        create_run_dir(tmp_path, "x")


def test_save_disabled_writes_no_bundle(prefect_api, tmp_path):
    config = load_config(None, tiny_overrides(**{"save.enabled": "false"}))
    summary = _train(config, tmp_path / "run")
    assert summary.bundle is None and not (tmp_path / "run" / "model").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == summary.test


def test_cli_with_no_server_set_up_uses_a_temporary_one(tmp_path):
    """The README's first command: no PREFECT_API_URL, a fresh PREFECT_HOME; Prefect's temporary server."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(ROOT))
    overrides = [a for o in tiny_overrides() for a in ("--set", o)]
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", *overrides, "--run-dir", "run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "model" / "bundle.json").is_file()
    assert "accuracy" in result.stdout and "Traceback" not in result.stderr
    assert (tmp_path / "prefect-home" / "prefect.db").is_file()  # the run went through the temporary server


def test_cli_session_starts_a_temporary_server_early_only_when_none_is_set_up(prefect_api, monkeypatch):
    from prefect.settings import (
        PREFECT_API_URL,
        get_current_settings,
        temporary_settings,
    )

    import flows._cli as cli

    started = []
    monkeypatch.setattr(cli, "_temporary_server_url", lambda warm, quiet=False: (started.append(tuple(warm)), "x")[1])
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with cli.prefect_session(False, cli.TRAINING_IMPORTS):
            # The server ends with the process: no heartbeats, whose thread costs each flow run up to a second.
            assert get_current_settings().flows.heartbeat_frequency is None
    assert started == [cli.TRAINING_IMPORTS]
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}, restore_defaults={PREFECT_API_URL}):
        with cli.prefect_session(False, ()):  # heartbeats the user set (env, profile, prefect.toml) are kept
            assert get_current_settings().flows.heartbeat_frequency == 60
    assert started == [cli.TRAINING_IMPORTS, ()]
    with cli.prefect_session(False, cli.TRAINING_IMPORTS):  # the session's server is set up: nothing to start
        assert get_current_settings().flows.heartbeat_frequency == 180
    assert started == [cli.TRAINING_IMPORTS, ()]


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_training_prints_the_resume_command(prefect_api, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, ctrl_c_as_at_a_terminal

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update(PREFECT_API_URL=prefect_api, PYTHONPATH=str(ROOT))
    overrides = tiny_overrides(**{"train.epochs": "100000", "train.early_stopping.enabled": "false"})
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.train", *(a for o in overrides for a in ("--set", o)), "--run-dir", "run"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and process.poll() is None:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert err.rstrip().endswith("interrupted\nresume it with: python -m flows.train --resume run"), err
    assert read_run_state(tmp_path / "run")["state"] == "failed"


def test_resume_hints_name_what_to_run(tmp_path, monkeypatch, capsys):
    from flows._cli import run_command
    from flows.sweep import resume_hint as sweep_hint
    from flows.train import resume_hint as train_hint
    from tasks.run.rundir import mark_finished, mark_running

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    assert train_hint(run) is None  # nothing to resume before the config is written
    (run / "config.yaml").write_text("name: r1\n")
    mark_running(run)
    assert train_hint(run) == "resume it with: python -m flows.train --resume runs/r1"
    mark_finished(run)
    assert train_hint(run) is None  # completed
    assert train_hint(Path("/elsewhere/my run")) is None

    sweep_dir = tmp_path / "sweeps" / "s"
    argv = ["--config", "my sweep.yaml", "--set", "n_trials=3"]
    assert sweep_hint(sweep_dir, argv) is None
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text("name: s\n")
    assert sweep_hint(sweep_dir, argv) == (
        "the sweep in sweeps/s resumes when you run the same command again: "
        "python -m flows.sweep --config 'my sweep.yaml' --set n_trials=3"
    )

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_command(interrupted, False, lambda: sweep_hint(sweep_dir, argv)) == 130
    assert capsys.readouterr().err == f"interrupted\n{sweep_hint(sweep_dir, argv)}\n"
    assert run_command(interrupted, False) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_in_a_sweep_prints_the_same_command(prefect_api, tmp_path, monkeypatch, capsys):
    import flows.sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        "name: s\nbase: {data: {source: {kind: builtin, name: iris}}}\nspace: {optimizer.lr: [0.01, 0.1]}\n"
    )

    def interrupted(config, sweep_dir=None):
        folder = Path(sweep_dir or Path("sweeps") / config.name)
        folder.mkdir(parents=True)
        (folder / "sweep.yaml").write_text("name: s\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.sweep, "sweep_flow", interrupted)
    assert flows.sweep.main(["--config", "s.yaml", "--set", "n_trials=2"]) == 130
    assert capsys.readouterr().err.endswith(
        "interrupted\nthe sweep in sweeps/s resumes when you run the same command again: "
        "python -m flows.sweep --config s.yaml --set n_trials=2\n"
    )


def test_the_retry_condition_reads_the_error_without_raising_it_and_says_why_it_did_not_retry(monkeypatch):
    """A deterministic error is not retried: one line says so, and the error's traceback gains no frames here."""
    import traceback

    from prefect.states import Failed

    import tasks.common.retry as retry

    lines = []
    monkeypatch.setattr(retry, "log_to_prefect", lambda line, level: lines.append((line, level)))
    try:
        raise DataError("data file not found: t.csv")
    except DataError as exc:
        error = exc
    frames_before = len(traceback.extract_tb(error.__traceback__))
    assert retry.retry_if_transient(None, None, Failed(data=error)) is False
    assert lines == [("DataError: data file not found: t.csv (not retried: not transient)", 40)]
    assert len(traceback.extract_tb(error.__traceback__)) == frames_before
    assert retry.retry_if_transient(None, None, Failed(data=ConnectionResetError("share hiccup"))) is True
    assert len(lines) == 1


def test_a_run_started_by_hand_from_a_deployment_keeps_its_name(monkeypatch, tiny_config):
    """The form's Run Name is kept; scheduled and command-line runs are named after config.name."""
    from types import SimpleNamespace

    import prefect.context

    from flows.train import run_name

    def named(deployment_id, auto_scheduled):
        run = SimpleNamespace(name="typed-in-the-form", deployment_id=deployment_id, auto_scheduled=auto_scheduled,
                              parameters={"config": tiny_config.model_dump(mode="json")}, created_by=None)
        context = SimpleNamespace(flow_run=run, parameters={"config": tiny_config})
        monkeypatch.setattr(prefect.context.FlowRunContext, "get", classmethod(lambda cls: context))
        return run_name()

    assert named("a-deployment", auto_scheduled=False) == "typed-in-the-form"
    assert named("a-deployment", auto_scheduled=True) == "iris-test"
    assert named(None, auto_scheduled=False) == "iris-test"


def test_a_deployment_runs_lines_go_to_its_prefect_log_only(monkeypatch, tiny_config, capsys):
    """The serving process prints Prefect's run log itself: a plain copy of each line would show it twice."""
    from types import SimpleNamespace

    import prefect.context

    from flows._deployed import deployed_config
    from tasks.common.log import say

    say("a command-line line")
    assert capsys.readouterr().err == "a command-line line\n"
    run = SimpleNamespace(name="from-the-form", deployment_id="a-deployment", auto_scheduled=False,
                          parameters={"config": tiny_config.model_dump(mode="json")}, created_by=None)
    monkeypatch.setattr(prefect.context.FlowRunContext, "get",
                        classmethod(lambda cls: SimpleNamespace(flow_run=run, parameters={"config": tiny_config})))
    logged = []
    monkeypatch.setattr("tasks.common.log.log_to_prefect", lambda line, *a: logged.append(line))
    deployed_config(type(tiny_config), tiny_config)
    say("a served run's line")
    assert capsys.readouterr().err == "" and logged == ["a served run's line"]
