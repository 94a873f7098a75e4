"""Fast feedback (#17): data errors before the server, predict without Prefect, history.csv as training goes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from schemas.errors import DataError
from schemas.loading import load_config
from schemas.train import EpochRecord
from tasks.common.files import csv_text
from tasks.run.outputs import HistoryCsv
from tests.conftest import ROOT, no_prefect_session, prepared, tiny_overrides

CPU = torch.device("cpu")


def _plain_env(**extra: str) -> dict[str, str]:
    """This process's environment without a Prefect server named, and a fresh Prefect home."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pw-prefect-home-")
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


# --------------------------------------------------------------------------- data errors before the server


def _csv(tmp: Path, target: str = "label") -> str:
    pd.DataFrame({"a": [1.0, 2.0] * 10, "b": [0.5] * 20, "label": [0, 1] * 10}).to_csv(tmp / "t.csv", index=False)
    return f"data.source={{kind: csv, path: {tmp / 't.csv'}, target: {target}}}"


DATA_CASES = {
    "missing-csv": lambda t: "data.source={kind: csv, path: missing.csv, target: y}",
    "missing-npz": lambda t: "data.source={kind: npz, path: none.npz}",
    "directory": lambda t: ((t / "d.csv").mkdir(), "data.source={kind: csv, path: d.csv, target: y}")[1],
    "target-missing": lambda t: _csv(t, target="species"),
    "empty-file": lambda t: ((t / "e.csv").write_text(""), "data.source={kind: csv, path: e.csv, target: y}")[1],
    "every-column-problem-at-once": lambda t: (
        (t / "m.csv").write_text("a,b,label\n1,x,0\n2,2,1\n3,3,\n?,4,1\n5,5,0\n"),
        "data.source={kind: csv, path: m.csv, target: label, exclude: [zz]}",
    )[1],
}


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_train_data_error_answers_before_the_server_with_the_stages_message(case, tmp_path, monkeypatch, capsys):
    import flows.train
    from tasks.data import prepare_data

    monkeypatch.chdir(tmp_path)
    override = DATA_CASES[case](tmp_path)
    with pytest.raises(DataError) as stage:
        prepare_data(load_config(None, [override]).data, 0)
    monkeypatch.setattr(flows.train, "prefect_session", no_prefect_session)
    assert flows.train.main(["--set", override]) == 3
    assert capsys.readouterr().err == f"error: {stage.value}\n"
    assert not (tmp_path / "runs").exists()


def test_sweep_data_error_answers_before_the_server(tmp_path, monkeypatch, capsys):
    import flows.sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flows.sweep, "prefect_session", no_prefect_session)
    args = ["--config", str(ROOT / "configs" / "sweep_digits.yaml"), "--sweep-dir", "s"]
    assert flows.sweep.main([*args, "--set", "base.data.source={kind: csv, path: missing.csv, target: y}"]) == 3
    assert capsys.readouterr().err == f"error: data file not found: {tmp_path / 'missing.csv'}\n"
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "s").exists()


def test_the_early_check_passes_good_data_and_leaves_the_rest_to_the_stage(tmp_path):
    from flows._cli import check_data_first

    check_data_first(load_config(None, tiny_overrides()).data)
    check_data_first(load_config(None, [_csv(tmp_path)]).data)
    frame = pd.DataFrame({"a": ["x", "y"] * 10, "label": [0, 1] * 10})  # a string feature: encoded as categories
    frame.to_csv(tmp_path / "t.csv", index=False)
    check_data_first(load_config(None, [f"data.source={{kind: csv, path: {tmp_path / 't.csv'}, target: label}}"]).data)


def test_train_command_with_missing_data_startsno_prefect_session(tmp_path):
    env = _plain_env()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", "--set", "data.source={kind: csv, path: missing.csv, target: y}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"error: data file not found: {tmp_path / 'missing.csv'}\n"
    assert not (tmp_path / "runs").exists()
    assert not (Path(env["PREFECT_HOME"]) / "prefect.db").exists(), "a temporary Prefect server was started"
    print(f"missing data answered in {seconds:.1f}s")


# --------------------------------------------------------------------------- predict without the detour


@pytest.fixture(scope="module")
def iris_bundle(tmp_path_factory) -> Path:
    from tasks.bundle import write_bundle
    from tasks.evaluate import evaluate_model
    from tasks.train import train_model

    config = load_config(None, tiny_overrides())
    data, parts = prepared(config, CPU)
    train_model(parts, data, config.train, CPU, config.seed)
    report = evaluate_model(parts.model, data, CPU, config.evaluate)
    folder = tmp_path_factory.mktemp("feedback")
    write_bundle(parts.model, config, data.spec, report, folder / "model", {})
    from sklearn.datasets import load_iris

    load_iris(as_frame=True).frame.sample(12, random_state=1).to_csv(folder / "in.csv", index=False)
    return folder


def test_wants_prefect_by_flag_or_api_url(monkeypatch):
    from flows.predict import wants_prefect

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert not wants_prefect(False) and wants_prefect(True)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert wants_prefect(False)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_plain_and_flow_predictions_are_the_same_bytes(iris_bundle, prefect_api, tmp_path, monkeypatch, suffix):
    import flows.predict

    monkeypatch.chdir(iris_bundle)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    plain, flowed = tmp_path / f"plain{suffix}", tmp_path / f"flow{suffix}"
    with monkeypatch.context() as patch:
        patch.setattr(flows.predict, "prefect_session", no_prefect_session)
        assert flows.predict.main(["--model", "model", "--input", "in.csv", "--output", str(plain)]) == 0
    entered = []
    original = flows.predict.prefect_session
    monkeypatch.setattr(flows.predict, "prefect_session", lambda debug: (entered.append(1), original(debug))[1])
    assert flows.predict.main(["--model", "model", "--input", "in.csv", "--output", str(flowed), "--prefect"]) == 0
    assert entered == [1]
    assert plain.read_bytes() == flowed.read_bytes()
    assert len(pd.read_csv(plain) if suffix == ".csv" else pd.read_parquet(plain)) == 12


def test_predict_command_runs_in_one_process_without_a_server(iris_bundle, run_cli, tmp_path):
    env = _plain_env()
    result = subprocess.run(
        [sys.executable, "-m", "flows.predict", "--model", "model", "--input", "in.csv", "--output", str(tmp_path / "a.csv")],
        cwd=iris_bundle, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert not (Path(env["PREFECT_HOME"]) / "prefect.db").exists(), "a temporary Prefect server was started"
    # With PREFECT_API_URL set (run_cli sets it), the command runs the flow: same bytes.
    flowed = run_cli("flows.predict", "--model", "model", "--input", "in.csv", "--output", str(tmp_path / "b.csv"),
                     cwd=iris_bundle)
    assert flowed.returncode == 0, flowed.stderr
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


# --------------------------------------------------------------------------- history.csv as training goes


def _record(epoch: int, regression: bool = False, seconds: float = 0.25) -> EpochRecord:
    metrics = {"val_mae": 0.5 / epoch, "val_r2": 0.9} if regression else {"val_accuracy": 0.5 + epoch / 100}
    return EpochRecord(epoch=epoch, train_loss=1 / epoch, val_loss=1.5 / epoch, lr=0.01, seconds=seconds, **metrics)


@pytest.mark.parametrize("regression", [False, True])
def test_history_rows_are_appended_as_epochs_finish_in_record_results_format(tmp_path, regression):
    history = HistoryCsv(tmp_path)
    records = [_record(e, regression) for e in (1, 2, 3)]
    for i, record in enumerate(records, 1):
        history.on_epoch_end(record)
        assert (tmp_path / "history.csv").read_bytes() == csv_text(records[:i]).encode()
    assert ("val_r2" in (tmp_path / "history.csv").read_text().splitlines()[0]) == regression


def test_a_resumed_history_drops_rows_past_the_checkpoint_and_never_repeats_an_epoch(tmp_path):
    killed = [_record(e) for e in (1, 2, 3, 4)]
    text = csv_text(killed)
    (tmp_path / "history.csv").write_bytes((text + "5,0.2,0.3,0.5").encode())  # a row cut short by the kill
    resumed = HistoryCsv(tmp_path)  # a new process: the checkpoint held epochs 1 and 2
    resumed.on_epoch_end(_record(3, seconds=9.0))
    resumed.on_epoch_end(_record(4, seconds=9.0))
    expected = [*killed[:2], _record(3, seconds=9.0), _record(4, seconds=9.0)]
    assert (tmp_path / "history.csv").read_bytes() == csv_text(expected).encode()
    resumed.on_epoch_end(_record(2, seconds=7.0))  # a retried attempt in the same process, from a checkpoint after epoch 1
    assert (tmp_path / "history.csv").read_bytes() == csv_text([killed[0], _record(2, seconds=7.0)]).encode()


def _history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_killed_run_keeps_its_finished_epochs_and_resume_ends_like_a_clean_run(run_cli, prefect_api, tmp_path):
    sets = {
        "name": "history-kill", "data.source.name": "digits", "model.hidden_sizes": "[64]", "train.epochs": "10",
        "train.batch_size": "8", "train.early_stopping.enabled": "false", "train.checkpoint.every_n_batches": "20",
        "train.progress": "false", "device": "cpu", "device.threads": "1",
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update(PREFECT_API_URL=prefect_api, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "flows.train", *args, "--run-dir", "killed"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live = tmp_path / "killed" / "history.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if live.is_file() and live.read_text().count("\n") >= 3:  # the header and epochs 1 and 2
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = _history(live)
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)) and 2 <= len(rows) < 10
    assert not (tmp_path / "killed" / "metrics.json").exists()

    resumed = run_cli("flows.train", "--resume", "killed")
    assert resumed.returncode == 0, resumed.stderr
    final = _history(live)
    assert [int(r["epoch"]) for r in final] == list(range(1, 11))
    assert final[: len(rows) - 1] == rows[:-1]  # epochs the checkpoint kept are the killed run's own rows

    from flows.train import train_flow

    train_flow(config=load_config(tmp_path / "killed" / "config.yaml"), run_dir=str(tmp_path / "clean"))
    clean = _history(tmp_path / "clean" / "history.csv")
    assert list(clean[0]) == list(final[0])
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in final] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in clean
    ]


def test_the_plain_predict_path_imports_no_prefect(iris_bundle, tmp_path):
    """Scoring a file in one process never imports Prefect (about a second); the flow is still there on use."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import runpy, sys\n"
        "sys.argv = ['predict', '--model', sys.argv[1], '--input', sys.argv[2], '--output', sys.argv[3]]\n"
        "try:\n"
        "    runpy.run_module('flows.predict', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'prefect' not in sys.modules, 'Prefect was imported'\n"
        "from flows.predict import load_model_task, predict_flow\n"
        "from flows.stages import save_model\n"
        "print(predict_flow.name, load_model_task.name, save_model.name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(iris_bundle / "model"), str(iris_bundle / "in.csv"), str(tmp_path / "p.csv")],
        cwd=ROOT, env=_plain_env(), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["predict", "load-model", "save-model"] and (tmp_path / "p.csv").is_file()
