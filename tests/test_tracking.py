"""Tracking: TensorBoard and MLflow records read back, plots, report.md, progress display, missing extras."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from schemas import ConfigError, load_config
from schemas.recipe import ModelSetup
from schemas.tracking import TrackingConfig
from tests.conftest import tiny_overrides

MLFLOW_ON = {"tracking.mlflow": "true", "tracking.tensorboard": "true", "tracking.experiment": "tracking-test"}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One local MLflow store for the module: creating its tables is the slow part."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _train(config, run_dir: Path):
    from flows.train import train_flow

    return train_flow(config=config, run_dir=str(run_dir), return_state=True)


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _assert_png(path: Path, min_bytes: int = 5000) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > min_bytes, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 300


# --------------------------------------------------------------------------- schema and extras


def test_tracking_is_off_by_default_and_validated():
    config = load_config(None, [])
    assert config.tracking == TrackingConfig(tensorboard=False, mlflow=False, plots=True)
    with pytest.raises(ConfigError, match=r"tracking\.mlfow: unknown key \(did you mean tracking\.mlflow\?\)"):
        load_config(None, ["tracking.mlfow=true"])
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri = '  ': expected a non-empty string"):
        load_config(None, ["tracking.mlflow_uri='  '"])


@pytest.mark.parametrize("key", ["mlflow", "tensorboard"])
def test_missing_extra_names_the_extra_to_install(monkeypatch, key):
    import tasks.run.tracking

    real = tasks.run.tracking._import

    def fake_import(module: str):
        if module.split(".")[-1] == key:
            raise ModuleNotFoundError(f"No module named {module!r}")
        return real(module)

    monkeypatch.setattr(tasks.run.tracking, "_import", fake_import)
    config = load_config(None, [f"tracking.{key}=true"])
    with pytest.raises(ConfigError) as info:
        tasks.run.tracking.check_tracking(config.tracking)
    assert info.value.exit_code == 2
    assert f"tracking.{key}=true needs the {key} package" in str(info.value)
    assert f"pip install 'pytorch-workflow[{key}]'" in str(info.value)
    tasks.run.tracking.check_tracking(load_config(None, []).tracking)  # off: nothing is imported or checked


def test_missing_extra_fails_the_command_before_any_run_dir(prefect_api, monkeypatch, tmp_path, capsys):
    import tasks.run.tracking
    from flows.train import main

    def no_mlflow(module: str):
        raise ModuleNotFoundError("No module named 'mlflow'")

    monkeypatch.setattr(tasks.run.tracking, "_import", no_mlflow)
    monkeypatch.chdir(tmp_path)
    args = [a for o in tiny_overrides(**{"tracking.mlflow": "true"}) for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracking.mlflow=true needs the mlflow package") and "Traceback" not in err
    assert "pip install 'pytorch-workflow[mlflow]'" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------- progress display


def _train_fn(*overrides: str):
    import torch

    from tasks.data import prepare_data
    from tasks.model import build_model
    from tasks.train import train_model

    config = load_config(None, tiny_overrides(**dict(o.split("=", 1) for o in overrides)))
    data = prepare_data(config.data, config.seed)
    cpu = torch.device("cpu")
    parts = build_model(ModelSetup.of(config), data.spec, cpu)
    return train_model(parts, data, config.train, cpu, config.seed)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_plain_line_per_epoch_without_a_terminal(capsys):
    result = _train_fn("train.progress=true", "train.epochs=3", "train.early_stopping.enabled=false")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "\r" not in "".join(lines)
    last = result.history[-1]
    assert lines[-1] == (
        f"epoch 3/3  train_loss {last.train_loss:.4f}  val_loss {last.val_loss:.4f}  "
        f"val_accuracy {last.val_accuracy:.4f}  lr {last.lr:.3g}  {last.seconds:.2f}s"
    )


def test_progress_is_a_bar_with_metrics_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = _train_fn("train.progress=true", "train.epochs=3", "train.early_stopping.enabled=false")
    out = terminal.getvalue()
    assert "\r" in out and "epoch 1/3" not in out  # redrawn in place, not one line per epoch
    final = out.split("\r")[-1]
    last = result.history[-1]
    assert "training: 100%" in final and "3/3" in final
    assert f"val_loss {last.val_loss:.4f}" in final and f"val_accuracy {last.val_accuracy:.4f}" in final
    assert out.endswith("\n")  # the bar was closed


# --------------------------------------------------------------------------- plots and report


def _report(task: str):
    from schemas.evaluate import EvalReport

    if task == "classification":
        return EvalReport(task=task, n_test=30, metrics={"accuracy": 0.9}, baseline={"accuracy": 0.33},
                          baseline_kind="majority class 'a'",
                          confusion_matrix=((9, 1, 0), (0, 10, 0), (1, 1, 8)))
    return EvalReport(task=task, n_test=50, metrics={"mae": 1.0}, baseline={"mae": 3.0}, baseline_kind="training mean 2")


def _records(n: int, regression: bool = False):
    from schemas.train import EpochRecord

    metric = "val_mae" if regression else "val_accuracy"
    return [EpochRecord(epoch=e, train_loss=1.0 / e, val_loss=1.2 / e, lr=0.01, seconds=0.1, **{metric: 0.5 + e / 20})
            for e in range(1, n + 1)]


def test_plots_are_valid_pngs(tmp_path):
    from tasks.run.plots import write_plots

    plots = write_plots(tmp_path / "c", _records(6), _report("classification"), best_epoch=4,
                        class_names=["a", "b", "c"])
    assert [p.name for p in plots.values()] == ["loss.png", "metric.png", "confusion_matrix.png"]
    rng = np.random.default_rng(0)
    actual = rng.normal(size=50)
    plots_r = write_plots(tmp_path / "r", _records(4, regression=True), _report("regression"),
                          regression=(actual, actual + rng.normal(scale=0.1, size=50)))
    assert [p.name for p in plots_r.values()] == ["loss.png", "metric.png", "predicted_vs_actual.png"]
    for path in [*plots.values(), *plots_r.values()]:
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["confusion_matrix.png", "loss.png", "metric.png"]


# --------------------------------------------------------------------------- whole runs


def test_tracking_off_writes_plots_and_report_only(prefect_api, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, tiny_overrides())
    state = _train(config, tmp_path / "run")
    summary = state.result()
    run = tmp_path / "run"
    assert not (run / "tensorboard").exists() and not (run / "tracking.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    for name in ("loss.png", "metric.png", "confusion_matrix.png"):
        _assert_png(run / "plots" / name)
    report = (run / "report.md").read_text()
    assert "![Loss](plots/loss.png)" in report and "![Confusion matrix](plots/confusion_matrix.png)" in report
    accuracy = (f"| accuracy | {summary.test['accuracy']:.4f} | {summary.uncertainty.interval('accuracy')} | "
                f"{summary.baseline['accuracy']:.4f} |")
    assert accuracy in report and "| device | cpu (" in report

    config = load_config(None, tiny_overrides(**{"tracking.plots": "false"}))
    _train(config, tmp_path / "run2")
    assert not (tmp_path / "run2" / "plots").exists()
    assert "## Plots" not in (tmp_path / "run2" / "report.md").read_text()


def test_tensorboard_and_mlflow_record_what_the_run_wrote(prefect_api, tmp_path, monkeypatch, mlflow_uri):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    config = load_config(None, tiny_overrides(**MLFLOW_ON, **{"tracking.mlflow_uri": uri}))
    state = _train(config, tmp_path / "run")
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    history = _history(run)
    tracking = json.loads((run / "tracking.json").read_text())
    assert tracking["tensorboard_dir"] == str(run / "tensorboard") and tracking["mlflow_tracking_uri"] == uri
    assert tracking["mlflow_run_url"] is None  # a local store has no server URL

    # TensorBoard: one run (no subdirectories), every epoch's scalars, the final metrics and the hparams.
    tb = run / "tensorboard"
    assert [p for p in tb.iterdir() if p.is_dir()] == []
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert logged == [(int(row["epoch"]), float(np.float32(row[name]))) for row in history], name
    for name, value in metrics["test"].items():
        assert [e.value for e in events.Scalars(f"test/{name}")] == [float(np.float32(value))]
        assert [e.value for e in events.Scalars(f"baseline/{name}")] == [float(np.float32(metrics["baseline"][name]))]
    hparams_tags = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams_tags["_hparams_/session_start_info"])
    logged_hparams = start.session_start_info.hparams
    assert logged_hparams["optimizer.lr"].number_value == pytest.approx(0.01)
    assert logged_hparams["model.hidden_sizes"].string_value == "[16]"
    assert logged_hparams["data.source.name"].string_value == "iris"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams_tags["_hparams_/experiment"])
    assert {m.name.tag for m in experiment.experiment.metric_infos} >= {"test/accuracy", "baseline/accuracy"}

    # MLflow: params, per-epoch metrics with step = epoch, final metrics, tags, artifacts, status.
    client = MlflowClient(tracking_uri=uri)
    mlrun = client.get_run(tracking["mlflow_run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert client.get_experiment(mlrun.info.experiment_id).name == "tracking-test"
    assert mlrun.data.params["optimizer.lr"] == "0.01" and mlrun.data.params["train.epochs"] == "5"
    assert mlrun.data.params["model.hidden_sizes"] == "[16]" and mlrun.data.params["tracking.mlflow"] == "true"
    for name in ("train_loss", "val_loss", "val_accuracy", "lr", "seconds"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, name))
        assert logged == [(int(row["epoch"]), float(row[name])) for row in history], name
    for name, value in metrics["test"].items():
        assert mlrun.data.metrics[f"test_{name}"] == value
        assert mlrun.data.metrics[f"baseline_{name}"] == metrics["baseline"][name]
    assert mlrun.data.metrics["best_epoch"] == metrics["training"]["best_epoch"]
    assert mlrun.data.tags["prefect.flow_run.id"] == str(state.state_details.flow_run_id)
    assert mlrun.data.tags["prefect.train_task_run.id"]
    assert mlrun.data.tags["run_dir"] == str(run)
    assert mlrun.data.tags["mlflow.note.content"] == (run / "report.md").read_text()
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config.yaml", "metrics.json", "history.csv", "report.md", "plots", "model"} <= artifacts
    assert {Path(a.path).name for a in client.list_artifacts(mlrun.info.run_id, "model")} >= {
        "weights.safetensors", "bundle.json", "config.yaml"}
    store = Path(uri[len("sqlite:///"):]).parent  # a local store's artifacts lie beside it, not in the working directory
    assert mlrun.info.artifact_uri.startswith((store / "mlruns").as_uri()) and not (tmp_path / "mlruns").exists()
    local = Path(client.download_artifacts(mlrun.info.run_id, "config.yaml", str(tmp_path / "dl")))
    assert local.read_text() == (run / "config.yaml").read_text()
    _assert_png(Path(client.download_artifacts(mlrun.info.run_id, "plots/loss.png", str(tmp_path / "dl"))))


def test_failed_run_ends_the_mlflow_run_failed(prefect_api, tmp_path, monkeypatch, mlflow_uri):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import flows.train
    import tasks.run.outputs

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tasks.run.outputs, "record_results", broken)
    uri = mlflow_uri
    config = load_config(None, tiny_overrides(**MLFLOW_ON, **{"tracking.mlflow_uri": uri}))
    with pytest.raises(OSError, match="disk full"):
        flows.train.train_flow(config=config, run_dir=str(tmp_path / "run"))
    tracking = json.loads((tmp_path / "run" / "tracking.json").read_text())
    mlrun = MlflowClient(tracking_uri=uri).get_run(tracking["mlflow_run_id"])
    assert mlrun.info.status == "FAILED" and mlrun.data.tags["error"] == "OSError: disk full"
    assert sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(
        mlrun.info.run_id, "val_loss")) == [1, 2, 3, 4, 5]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2, 3, 4, 5]  # flushed and closed


def test_tracker_for_a_sweep_trial_nests_and_logs_history_afterwards(tmp_path, mlflow_uri):
    """The API a sweep uses: a parent run, a nested trial run and one TensorBoard dir per trial."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tasks.run.tracking import start_tracking

    uri = mlflow_uri
    base = load_config(None, tiny_overrides(**MLFLOW_ON, **{"tracking.mlflow_uri": uri}))
    with start_tracking(base, tmp_path / "sweep", run_name="sweep-x", params={"n_trials": 2},
                        tensorboard=False) as parent:
        trial_dir = tmp_path / "sweep" / "trials" / "0001"
        with start_tracking(base, trial_dir, run_name="trial-1", parent_run_id=parent.mlflow_run_id,
                            tensorboard_dir=tmp_path / "sweep" / "tensorboard" / "trial-1") as trial:
            trial.log_history(_records(3))
            trial.log_final({"test_accuracy": 0.9}, step=3, hparams={"optimizer.lr": 0.01})
        parent.log_final({"best_value": 0.9}, step=1)
    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(trial.mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.mlflow_run_id and child.info.status == "FINISHED"
    assert client.get_run(parent.mlflow_run_id).data.params == {"n_trials": "2"}
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [1, 2, 3]
    events = EventAccumulator(str(tmp_path / "sweep" / "tensorboard" / "trial-1"))
    events.Reload()
    assert [e.value for e in events.Scalars("val_accuracy")] == [float(np.float32(0.5 + e / 20)) for e in (1, 2, 3)]
    assert [p.name for p in (tmp_path / "sweep" / "tensorboard").iterdir()] == ["trial-1"]
