"""Sweeps: the space schema, samplers, pruning, resume, parallel = serial, Dask, and the results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from schemas import ConfigError, load_config
from schemas.sweep import SweepConfig, load_sweep_config, validate_sweep
from tasks.data import prepare_data
from tasks.sweep import (
    PLOT,
    finished_trials,
    leaderboard,
    open_study,
    open_sweep_dir,
    plain_dispatch,
    requeue_interrupted,
    run_rounds,
    trial_label,
)
from tasks.sweep.executors import InProcessExecutor, LocalPoolExecutor, plan_threads

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "name": "iris-sweep-base",
    "data": {"source": {"kind": "builtin", "name": "iris"}},
    "model": {"kind": "mlp", "hidden_sizes": [16], "dropout": 0.0},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 4, "batch_size": 16, "progress": False, "early_stopping": {"enabled": False}},
    "device": {"name": "cpu", "threads": 1},
}
SPACE = {
    "optimizer.lr": {"kind": "float", "low": 1e-3, "high": 0.1, "log": True},
    "model.hidden_sizes": [[8], [16, 8]],
}


def sweep(**settings) -> SweepConfig:
    data = {"name": "iris", "base": BASE, "space": SPACE, "n_trials": 4, "trials_per_round": 2, **settings}
    return validate_sweep(data)


@pytest.fixture(scope="module")
def iris():
    torch.set_num_threads(1)
    return prepare_data(load_config(None, ["data.source.name=iris"]).data, 0)


class Counting:
    """An executor wrapper that remembers which trials it ran."""

    def __init__(self, inner):
        self.inner, self.ran = inner, []

    def run(self, request):
        self.ran.append(request.number)
        return self.inner.run(request)


def run_engine(config: SweepConfig, data, path: Path, executor=None):
    """The sweep's ask/run/tell loop without Prefect; returns (study, executor)."""
    path, _ = open_sweep_dir(path, config, data.spec)
    study = open_study(path, config)
    requeue_interrupted(study)
    workers, threads = plan_threads(config)
    executor = executor or Counting(InProcessExecutor(data, threads))
    run_rounds(study, config, path, threads, plain_dispatch(executor, workers))
    return study, executor


def summary(study, config) -> list[tuple]:
    return [(r.trial, r.state, r.value, json.dumps(r.params, sort_keys=True), r.epochs)
            for r in sorted(leaderboard(study, config), key=lambda r: r.trial)]


# --------------------------------------------------------------------------- the space


def test_space_shorthands_and_trial_configs():
    config = sweep(sampler="random", pruner="median", executor="dask")
    assert config.space["model.hidden_sizes"].kind == "categorical"
    assert config.sampler.name == "random" and config.pruner.name == "median" and config.executor.kind == "dask"
    assert config.resolved_direction == "minimize" and config.epoch_metric == "val_loss"
    trial = config.trial_config({"optimizer.lr": 1.0e-5, "model.hidden_sizes": [32, 8]})
    assert trial.optimizer.lr == 1.0e-5 and trial.model.hidden_sizes == (32, 8)
    assert trial.optimizer.name == "adam" and trial.train.epochs == 4  # the rest is the base
    switched = config.trial_config({"optimizer": {"name": "sgd", "lr": 0.2}})
    assert switched.optimizer.name == "sgd" and switched.optimizer.momentum == 0.9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"optimizer.lrr": [0.1]}},
         "space.optimizer.lrr: not a key of the run config (did you mean optimizer.lr?)"),
        ({"space": {"optimizer.lr": {"kind": "float", "low": 0.5, "high": 0.1}}},
         "space.optimizer.lr: low (0.5) must be below high (0.1)"),
        ({"space": {"optimizer.lr": {"kind": "float", "low": 0, "high": 0.1, "log": True}}},
         "space.optimizer.lr: a log scale needs low > 0"),
        ({"space": {"optimizer.lr": {"kind": "float", "low": 0.1, "high": 20}}},
         "space.optimizer.lr: the value 20.0 does not fit the run config: optimizer.lr = 20.0: "
         "Input should be less than or equal to 10"),
        ({"space": {"model.hidden_sizes": {"kind": "int", "low": 8, "high": 64}}},
         "space.model.hidden_sizes: the value 8 does not fit the run config"),
        ({"space": {"optimizer.lr": {"kind": "flaot", "low": 0.1, "high": 0.2}}},
         "space.optimizer.lr.kind = 'flaot': expected one of 'float', 'int', 'categorical'"),
        ({"space": {"data.split.val": [0.1, 0.2]}}, "space.data.split.val: cannot be searched"),
        ({"space": {"seed": [0, 1]}}, "space.seed: cannot be searched: the seed drives the data split"),
        ({"sampler": "grid"}, "space.optimizer.lr: the grid sampler needs a finite set of values"),
        ({"space": {"optimizer.momentum": [0.5, 0.9]}},
         "space.optimizer.momentum: the value 0.5 does not fit the run config: optimizer.momentum: unknown key"),
        ({"space": {"optimizer.name": ["adam", "sgd"], "optimizer.betas": [[0.9, 0.99]]}, "sampler": "grid"},
         "space: the grid point optimizer.name='sgd', optimizer.betas=[0.9, 0.99] is not a valid run config"),
        ({"metric": "val_accuracy", "direction": "minimize"},
         "direction = 'minimize' but val_accuracy is better when higher"),
        ({"metric": "test_r2", "pruner": "median", "prune_metric": "val_loss"},
         "prune_metric = 'val_loss' improves in the other direction from metric 'test_r2'"),
        ({"parallelism": 3}, "parallelism = 3 exceeds trials_per_round = 2"),
        ({"n_trails": 3}, "n_trails: unknown key (did you mean n_trials?)"),
        ({"pruner": {"name": "median", "n_startup": 1}},
         "pruner.n_startup: unknown key (did you mean pruner.n_startup_trials?)"),
    ],
)
def test_bad_space_fails_at_once_naming_the_key(change, message):
    with pytest.raises(ConfigError) as info:
        sweep(**change)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid sweep config")


def test_metric_must_fit_the_task():
    config = sweep(metric="test_r2")
    with pytest.raises(ConfigError, match="metric = 'test_r2' needs a regression task"):
        config.check_task("classification")


def test_presets_validate_and_overrides_apply(tmp_path):
    presets = sorted((ROOT / "configs").glob("sweep_*.yaml"))
    assert presets
    for preset in presets:
        assert isinstance(load_sweep_config(preset), SweepConfig)
    config = load_sweep_config(
        ROOT / "configs" / "sweep_digits.yaml",
        ["n_trials=3", "sampler=random", "base.train.epochs=2", "space.train.batch_size=null"],
    )
    assert config.base == load_config(ROOT / "configs" / "digits_mlp.yaml", ["train.epochs=2"])
    assert config.n_trials == 3 and config.sampler.name == "random" and "train.batch_size" not in config.space
    with pytest.raises(ConfigError, match=r"invalid base run config in .*: optimizer.lrr: unknown key"):
        load_sweep_config(ROOT / "configs" / "sweep_digits.yaml", ["base.optimizer.lrr=1"])


def test_cli_bad_space_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from flows.sweep import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": BASE, "space": {"optimizer.lr": {"kind": "float", "low": 0, "high": 1}}}))
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: invalid sweep config in {bad}: space.optimizer.lr: the value 0.0 does not fit the run config: "
        "optimizer.lr = 0.0: Input should be greater than 0\n"
    )
    assert "Traceback" not in err and not (tmp_path / "sweeps").exists()


def test_parallelism_over_cores_is_refused(monkeypatch):
    import tasks.sweep.executors

    monkeypatch.setattr(tasks.sweep.executors, "available_cores", lambda: 2)
    with pytest.raises(ConfigError, match="parallelism = 3 is more than the 2 CPU core"):
        plan_threads(sweep(parallelism=3, trials_per_round=4))
    with pytest.raises(ConfigError, match=r"base.device.threads = 2 with parallelism = 2 needs 4 cores"):
        plan_threads(validate_sweep({**sweep(parallelism=2).model_dump(), "base": {**BASE, "device": {"name": "cpu", "threads": 2}}}))
    assert plan_threads(validate_sweep({**sweep(parallelism=2).model_dump(), "base": {**BASE, "device": "cpu"}})) == (2, 1)


# --------------------------------------------------------------------------- samplers, pruning, failures


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_samplers_run_the_trials(sampler, iris, tmp_path):
    space = {"optimizer.lr": {"kind": "float", "low": 0.01, "high": 0.03, "step": 0.01}, "model.hidden_sizes": [[8], [16]]}
    config = sweep(sampler={"name": sampler, **({"n_startup_trials": 2} if sampler == "tpe" else {})},
                   space=space, n_trials=6 if sampler == "grid" else 4)
    study, executor = run_engine(config, iris, tmp_path / "s")
    rows = summary(study, config)
    assert [r[1] for r in rows] == ["complete"] * len(rows)
    assert executor.ran == list(range(len(rows)))
    assert all(r[2] is not None and 0 < r[2] < 2 for r in rows)
    params = [r[3] for r in rows]
    if sampler == "grid":  # every point once
        assert len(rows) == 6 and len(set(params)) == 6
    else:
        assert len(rows) == 4 and len(set(params)) >= 2
    again, _ = run_engine(config, iris, tmp_path / "again")  # same seed, same sweep
    assert summary(again, config) == rows


@pytest.mark.parametrize(
    "pruner",
    [{"name": "median", "n_startup_trials": 1},
     {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2}],
)
def test_pruning_stops_a_clearly_bad_trial_early(pruner, iris, tmp_path):
    # Grid seed 1 runs lr=0.05 first; lr=1e-6 then learns nothing and is stopped after its first epoch.
    config = sweep(space={"optimizer.lr": [0.05, 1e-6]}, sampler={"name": "grid", "seed": 1}, pruner=pruner,
                   n_trials=2, trials_per_round=1)
    study, _ = run_engine(config, iris, tmp_path / "s")
    rows = summary(study, config)
    assert [(r[1], json.loads(r[3])["optimizer.lr"], r[4]) for r in rows] == [("complete", 0.05, 4), ("pruned", 1e-6, 1)]
    with open(tmp_path / "s" / "trials" / "0001" / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    assert not (tmp_path / "s" / "trials" / "0001" / "weights.safetensors").exists()


def test_a_trial_that_fails_for_a_config_reason_is_recorded_and_the_sweep_goes_on(iris, tmp_path):
    # A CNN needs image-shaped input: iris has 4 flat features, so those trials fail when the model is built.
    config = sweep(space={"model": [{"kind": "mlp", "hidden_sizes": [8]}, {"kind": "cnn"}]},
                   sampler={"name": "grid", "seed": 0}, n_trials=2)
    study, _ = run_engine(config, iris, tmp_path / "s")
    by_kind = {r.params["model"]["kind"]: r for r in leaderboard(study, config)}
    assert by_kind["mlp"].state == "complete" and by_kind["mlp"].value is not None
    assert by_kind["cnn"].state == "failed"
    assert "model.kind = 'cnn' needs image-shaped input" in by_kind["cnn"].note
    result = json.loads((tmp_path / "s" / "trials" / f"{by_kind['cnn'].trial:04d}" / "result.json").read_text())
    assert result["state"] == "failed" and "image-shaped" in result["error"]


# --------------------------------------------------------------------------- resume


def test_resume_runs_only_the_missing_trials(iris, tmp_path):
    first, executor = run_engine(sweep(n_trials=2, sampler={"name": "tpe", "n_startup_trials": 2}), iris, tmp_path / "s")
    assert executor.ran == [0, 1]
    before = summary(first, sweep(n_trials=2))
    config = sweep(n_trials=4, sampler={"name": "tpe", "n_startup_trials": 2})
    resumed, executor = run_engine(config, iris, tmp_path / "s")
    assert executor.ran == [2, 3]  # 0 and 1 are not run again
    assert summary(resumed, config)[:2] == before
    # The same four trials as a sweep that was never interrupted.
    straight, _ = run_engine(config, iris, tmp_path / "straight")
    assert summary(straight, config) == summary(resumed, config)
    # Nothing left to do: a rerun runs nothing.
    _, executor = run_engine(config, iris, tmp_path / "s")
    assert executor.ran == []


def test_interrupted_trials_are_requeued_with_their_parameters(iris, tmp_path):
    config = sweep(n_trials=3, sampler={"name": "random"})
    path, _ = open_sweep_dir(tmp_path / "s", config, iris.spec)
    study = open_study(path, config)
    from tasks.sweep import decode_params, distributions

    crashed = study.ask(distributions(config))  # a process died while this trial ran: it stays RUNNING
    study, executor = run_engine(config, iris, tmp_path / "s")
    rows = {r.trial: r for r in leaderboard(study, config)}
    assert rows[crashed.number].state == "failed" and rows[crashed.number].note == "interrupted; re-queued as trial 1"
    assert rows[1].state == "complete" and rows[1].params == decode_params(config, crashed.params)
    assert rows[1].note == "re-run of interrupted trial 0"
    assert executor.ran == [1, 2, 3] and finished_trials(study) == 3


def test_a_different_sweep_in_the_same_dir_is_refused(iris, tmp_path):
    run_engine(sweep(n_trials=1, trials_per_round=1), iris, tmp_path / "s")
    with pytest.raises(ConfigError, match=r"holds a sweep with another config \(.*space.optimizer.lr: \{'kind': 'float'"):
        open_sweep_dir(tmp_path / "s", sweep(space={"optimizer.lr": [0.1, 0.2]}, trials_per_round=1), iris.spec)
    open_sweep_dir(tmp_path / "s", sweep(n_trials=9, trials_per_round=1), iris.spec)  # more trials: fine


# --------------------------------------------------------------------------- parallel


def test_parallel_local_processes_give_the_serial_results(iris, tmp_path):
    settings = dict(n_trials=4, sampler={"name": "tpe", "n_startup_trials": 2}, pruner={"name": "median", "n_startup_trials": 1})
    serial_config = sweep(**settings)
    serial, _ = run_engine(serial_config, iris, tmp_path / "serial")
    config = sweep(parallelism=2, **settings)
    workers, threads = plan_threads(config)
    pool = LocalPoolExecutor(iris, workers, threads)
    try:
        parallel, _ = run_engine(config, iris, tmp_path / "parallel", Counting(pool))
    finally:
        pool.close()
    assert summary(parallel, config) == summary(serial, serial_config)
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "parallel" / "trials").glob("*/result.json"))]
    assert len({r["worker"] for r in results}) <= 2 and all(r["threads"] == 1 for r in results)
    assert all(r["data_loads"] == 1 for r in results)  # each worker mapped the data once, for all its trials


# --------------------------------------------------------------------------- the flow


def _task_run_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name for r in runs}


@pytest.mark.slow
def test_flow_writes_results_and_the_best_bundle_predicts(prefect_api, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from prefect.client.orchestration import get_client

    import tasks.sweep.executors
    from flows.predict import main as predict_main
    from flows.sweep import sweep_flow
    from tasks.bundle import load_model

    real, calls = tasks.sweep.executors.execute_trial, []

    def flaky(request, data, loads=1):  # the first attempt of trial 1 hits a transient error
        calls.append(request.number)
        if calls.count(1) == 1 and request.number == 1:
            raise ConnectionResetError("network share hiccup")
        return real(request, data, loads)

    monkeypatch.setattr(tasks.sweep.executors, "execute_trial", flaky)
    base = {**BASE, "train": {**BASE["train"], "retry": {"retries": 1, "delay_seconds": 0}}}
    config = validate_sweep({"name": "iris-flow", "base": base, "space": SPACE, "n_trials": 3, "trials_per_round": 3,
                             "metric": "val_accuracy", "sampler": {"name": "random", "seed": 3}})
    state = sweep_flow(config=config, sweep_dir=str(tmp_path / "s"), return_state=True)
    result = state.result()
    path = tmp_path / "s"
    assert calls.count(1) == 2 and result.counts == {"complete": 3}  # retried by Prefect, then completed

    with open(path / "leaderboard.csv") as handle:
        board = list(csv.DictReader(handle))
    assert [row["rank"] for row in board] == ["1", "2", "3"]
    assert list(board[0])[:6] == ["rank", "trial", "state", "val_accuracy", "optimizer.lr", "model.hidden_sizes"]
    values = [float(row["val_accuracy"]) for row in board]
    assert values == sorted(values, reverse=True) and values[0] == result.best_value
    assert int(board[0]["trial"]) == result.best_trial
    assert (path / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((path / "device.json").read_text())["device"] == "cpu"
    assert not (path / "tensorboard").exists() and not list(path.rglob("tracking.json"))  # tracking is off

    best = load_config(path / "best_config.yaml")
    assert best == config.trial_config(result.best_params)
    bundle = load_model(path / "best_model")
    assert bundle.config == best and bundle.manifest["sweep"]["trial"] == result.best_trial
    trial_eval = json.loads((path / "trials" / f"{result.best_trial:04d}" / "evaluation.json").read_text())
    assert bundle.evaluation["metrics"] == trial_eval["metrics"]

    names = _task_run_names(state.state_details.flow_run_id)
    rows = leaderboard(open_study(path, config), config)
    assert {trial_label(row.trial, row.params) for row in rows} <= names
    lr, sizes = rows[0].params["optimizer.lr"], rows[0].params["model.hidden_sizes"]
    assert f"trial-{rows[0].trial}[lr={lr:.4g},hidden_sizes={json.dumps(sizes).replace(' ', '')}]" in names
    assert "prepare-data[iris]" in names and any(n.startswith("save-model") for n in names)
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    assert any(a.key == "sweep-iris-flow" for a in artifact)

    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame.head(20)
    frame.to_csv(tmp_path / "in.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert predict_main(["--model", str(path / "best_model"), "--input", "in.csv", "--output", "out.csv"]) == 0
    predicted = pd.read_csv(tmp_path / "out.csv")
    expected = bundle.predict_frame(frame)
    assert list(predicted["prediction"]) == list(expected["prediction"])
    assert np.allclose(predicted.iloc[:, 1:].to_numpy(), expected.iloc[:, 1:].to_numpy(), atol=1e-6)

    # Rerunning the same sweep resumes it: nothing is run again, and the outputs are rewritten the same.
    again = sweep_flow(config=config, sweep_dir=str(path))
    assert again.resumed and again.ran_now == 0 and again.best_trial == result.best_trial
    assert len(calls) == 4


@pytest.mark.slow
def test_flow_tracks_the_sweep_and_records_its_device(prefect_api, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.sweep import sweep_flow
    from schemas.errors import TrainingError

    config = _tracked(tmp_path, precision="bf16")
    result = sweep_flow(config=config, sweep_dir=str(tmp_path / "s"))
    path = tmp_path / "s"
    device = json.loads((path / "device.json").read_text())
    assert (device["device"], device["precision"]) == ("cpu", "bf16") and result.outputs["device"] == str(path / "device.json")
    assert {json.loads(p.read_text()).get("precision") for p in path.glob("trials/*/result.json")} == {"bf16", None}
    assert result.device.startswith("cpu (") and result.outputs["tensorboard"] == str(path / "tensorboard")
    assert sorted(p.name for p in (path / "tensorboard").iterdir()) == ["trial-0000", "trial-0001", "trial-0002"]
    parent = json.loads((path / "tracking.json").read_text())
    client = MlflowClient(parent["mlflow_tracking_uri"])
    run = client.get_run(parent["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["best_value"] == pytest.approx(result.best_value)
    assert run.data.metrics["best_test_accuracy"] == pytest.approx(result.best_test["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"leaderboard.csv", "metric_vs_trial.png", "param_vs_metric.png", "best_config.yaml", "device.json",
            "best_model"} <= artifacts
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.data.tags["trial_state"] for c in children) == ["complete", "complete", "failed"]

    # A sweep in which no trial completes fails, and so does its parent run.
    broken = _tracked(tmp_path, name="iris-broken", space={"model": [{"kind": "cnn"}]}, n_trials=1)
    with pytest.raises(TrainingError, match="no trial of sweep iris-broken completed"):
        sweep_flow(config=broken, sweep_dir=str(tmp_path / "broken"))
    failed = client.get_run(json.loads((tmp_path / "broken" / "tracking.json").read_text())["mlflow_run_id"])
    assert failed.info.status == "FAILED" and "no trial of sweep" in failed.data.tags["error"]
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{failed.info.run_id}'")
    assert [c.info.status for c in nested] == ["FAILED"]


@pytest.mark.slow
def test_dask_local_cluster_gives_the_serial_results(prefect_api, tmp_path):
    from flows.sweep import sweep_flow

    settings = {"name": "iris-dask", "base": BASE, "space": SPACE, "n_trials": 4, "trials_per_round": 2,
                "sampler": {"name": "tpe", "n_startup_trials": 2}}
    serial_config = validate_sweep(settings)
    serial, _ = run_engine(serial_config, prepare_data(serial_config.base.data, 0), tmp_path / "serial")
    config = validate_sweep({**settings, "parallelism": 2, "executor": "dask"})
    result = sweep_flow(config=config, sweep_dir=str(tmp_path / "dask"))
    assert result.executor == "Dask LocalCluster, 2 workers x 1 thread(s)"
    assert summary(open_study(tmp_path / "dask", config), config) == summary(serial, serial_config)
    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "dask" / "trials").glob("*/result.json")}
    assert 1 <= len(workers) <= 2


def test_timeout_stops_asking_new_rounds(iris, tmp_path):
    clock = iter([0.0, 0.0, 100.0])  # start, first check (runs a round), second check (past the budget)
    config = sweep(n_trials=4, trials_per_round=1, timeout_seconds=50)
    path, _ = open_sweep_dir(tmp_path / "s", config, iris.spec)
    study = open_study(path, config)
    report = run_rounds(study, config, path, 1, plain_dispatch(InProcessExecutor(iris, 1), 1), clock=lambda: next(clock))
    assert report.ran == 1 and report.stopped_by_timeout and finished_trials(study) == 1


def test_the_sweeps_device_decision_and_precision_reach_the_trials(iris, tmp_path):
    from tasks.data import probe_workload
    from tasks.device import select_device

    space = {"optimizer.lr": [0.01]}
    fp32 = sweep(space=space, sampler="grid", n_trials=1, trials_per_round=1)
    bf16 = sweep(space=space, sampler="grid", n_trials=1, trials_per_round=1,
                 base={**BASE, "device": {"name": "cpu", "threads": 1, "precision": "bf16"}})
    results = []
    for config, name in ((fp32, "fp32"), (bf16, "bf16")):
        chosen = select_device(config.base.device, probe_workload(config.base))  # as the flow does, once
        path, _ = open_sweep_dir(tmp_path / name, config, iris.spec)
        study = open_study(path, config)
        run_rounds(study, config, path, 1, plain_dispatch(InProcessExecutor(iris, 1), 1), device=chosen)
        recorded = json.loads((path / "trials" / "0000" / "result.json").read_text())
        assert (recorded["device"], recorded["precision"]) == ("cpu", name)
        results.append(summary(study, config)[0])
    a, b = results
    assert a[1] == b[1] == "complete" and a[2] != b[2]  # bf16 autocast trains with other numbers
    assert b[2] == pytest.approx(a[2], abs=0.1)  # ... to about the same result


TRACKED_BASE = {**BASE, "train": {**BASE["train"], "epochs": 2}}
# Two MLPs and a CNN, which iris's flat features refuse: two complete trials and a failed one.
TRACKED_SPACE = {"model": [{"kind": "mlp", "hidden_sizes": [8]}, {"kind": "mlp", "hidden_sizes": [16]}, {"kind": "cnn"}]}


def _tracked(tmp_path, mlflow=True, tensorboard=True, precision="fp32", **settings):
    tracking = {"mlflow": mlflow, "tensorboard": tensorboard, "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "experiment": "sweeps"}
    base = {**TRACKED_BASE, "tracking": tracking, "device": {**BASE["device"], "precision": precision}}
    return sweep(**{"base": base, "space": TRACKED_SPACE, "sampler": {"name": "grid", "seed": 0}, "n_trials": 3,
                    "trials_per_round": 3, **settings})


def test_tracking_logs_a_parent_run_with_a_nested_run_and_a_tensorboard_run_per_trial(iris, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tasks.sweep import (
        LEADERBOARD,
        PARAM_PLOT,
        SweepTracking,
        leaderboard_records,
        write_leaderboard_csv,
        write_param_plot,
    )

    config = _tracked(tmp_path)
    path, _ = open_sweep_dir(tmp_path / "s", config, iris.spec)
    study = open_study(path, config)
    tracking = SweepTracking.start(config, path)
    logged = []

    def on_trial(number):  # called as each outcome is recorded, before the round's next trial is told
        logged.append(number)
        tracking.log_trial(number)

    run_rounds(study, config, path, 1, plain_dispatch(InProcessExecutor(iris, 1), 1), on_trial=on_trial)
    rows = leaderboard(study, config)
    write_leaderboard_csv(path / LEADERBOARD, leaderboard_records(rows, config))  # as the flow does
    write_param_plot(path / PARAM_PLOT, rows, config)
    tracking.finish(rows, {"accuracy": 0.9})
    parent = tracking.result()
    assert sorted(logged) == [0, 1, 2] and [r.state for r in rows] == ["complete", "complete", "failed"]

    client = MlflowClient(parent.mlflow_tracking_uri)
    runs = client.search_runs([parent.mlflow_experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.mlflow_run_id}
    assert len(runs) == 4 and len(children) == 3
    for row in rows:
        child = children[f"trial-{row.trial}"]
        assert child.data.tags["trial_state"] == row.state
        assert child.data.params["model.kind"] == row.params["model"]["kind"]
        assert child.data.params["optimizer.lr"] == "0.01" and child.data.params["data.source.name"] == "iris"
        board = EventAccumulator(str(path / "tensorboard" / f"trial-{row.trial:04d}"))
        board.Reload()
        if row.state == "failed":
            assert child.info.status == "FAILED" and "image-shaped" in child.data.tags["error"]
            assert "sweep_val_loss" not in child.data.metrics and board.Tags()["scalars"] == []
            continue
        assert child.info.status == "FINISHED"
        assert child.data.metrics["sweep_val_loss"] == pytest.approx(row.value)
        assert 0 < child.data.metrics["test_accuracy"] <= 1
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2]
        history = list(csv.DictReader(open(path / "trials" / f"{row.trial:04d}" / "history.csv")))
        assert [e.value for e in board.Scalars("train_loss")] == pytest.approx([float(h["train_loss"]) for h in history])
        assert [e.step for e in board.Scalars("val_loss")] == [1, 2]
        assert board.Scalars("sweep_val_loss")[0].value == pytest.approx(row.value)  # in the same run as the hparams
        start = plugin_data_pb2.HParamsPluginData.FromString(
            board.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        assert json.loads(start.session_start_info.hparams["model"].string_value) == row.params["model"]

    best = min(r.value for r in rows if r.value is not None)
    parent_run = client.get_run(parent.mlflow_run_id)
    assert parent_run.info.status == "FINISHED" and parent_run.info.run_name == "sweep-iris"
    assert parent_run.data.metrics["best_value"] == pytest.approx(best) == rows[0].value
    assert parent_run.data.metrics["best_trial"] == rows[0].trial and parent_run.data.metrics["trials_failed"] == 1
    assert parent_run.data.metrics["best_test_accuracy"] == pytest.approx(0.9)
    assert parent_run.data.params["n_trials"] == "3" and parent_run.data.params["base.train.epochs"] == "2"
    assert {a.path for a in client.list_artifacts(parent.mlflow_run_id)} >= {LEADERBOARD, PARAM_PLOT}

    # Resumed: a new parent logs every finished trial again; the TensorBoard runs are left as they were.
    events = sorted(p.name for p in (path / "tensorboard").rglob("events.out.tfevents.*"))
    again = SweepTracking.start(config, path)
    again.log_trials(rows)
    again.fail(RuntimeError("worker lost"))
    failed = client.get_run(again.result().mlflow_run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["error"] == "RuntimeError: worker lost"
    nested = client.search_runs([parent.mlflow_experiment_id],
                                f"tags.mlflow.parentRunId = '{again.result().mlflow_run_id}'")
    assert len(nested) == 3
    assert sorted(p.name for p in (path / "tensorboard").rglob("events.out.tfevents.*")) == events


def test_tracking_off_writes_no_tracking_files(iris, tmp_path, monkeypatch):
    from tasks.sweep import SweepTracking

    monkeypatch.chdir(tmp_path)  # the default MLflow store would be ./mlflow.db
    config = _tracked(tmp_path, mlflow=False, tensorboard=False)
    path, _ = open_sweep_dir(tmp_path / "s", config, iris.spec)
    assert SweepTracking.start(config, path) is None
    run_rounds(open_study(path, config), config, path, 1, plain_dispatch(InProcessExecutor(iris, 1), 1))
    written = {p.name for p in tmp_path.rglob("*")}
    assert "result.json" in written and not written & {"tensorboard", "tracking.json", "mlflow.db", "mlruns"}


def test_the_parameter_plot_has_a_panel_per_searched_key(iris, tmp_path):
    from PIL import Image

    from tasks.sweep import leaderboard, write_param_plot

    config = sweep(space={"optimizer.lr": {"kind": "float", "low": 0.005, "high": 0.05, "log": True},
                          "model.hidden_sizes": [[8], [16, 8]]}, sampler="random", n_trials=3, trials_per_round=3)
    study, _ = run_engine(config, iris, tmp_path / "s")
    write_param_plot(tmp_path / "p.png", leaderboard(study, config), config)
    with Image.open(tmp_path / "p.png") as image:
        image.verify()
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == (800, 360)  # two 4-inch panels at 100 dpi


# --------------------------------------------------------------------------- regression metrics, failed setups


DIABETES = {**BASE, "name": "diabetes-sweep-base", "data": {"source": {"kind": "builtin", "name": "diabetes"}},
            "train": {**BASE["train"], "epochs": 2, "batch_size": 32}}


@pytest.fixture(scope="module")
def diabetes():
    torch.set_num_threads(1)
    return prepare_data(load_config(None, ["data.source.name=diabetes"]).data, 0)


def test_epoch_metric_follows_the_task_and_direction_of_the_metric():
    expected = {"test_r2": "val_r2", "val_r2": "val_r2", "test_mae": "val_mae", "test_rmse": "val_loss",
                "test_mse": "val_loss", "val_mae": "val_mae", "val_loss": "val_loss", "test_accuracy": "val_accuracy",
                "test_macro_f1": "val_accuracy", "val_accuracy": "val_accuracy"}
    for metric, epoch in expected.items():
        config = sweep(metric=metric, pruner="median")
        assert config.epoch_metric == epoch, metric
        config.check_task("regression" if metric in ("test_r2", "val_r2", "test_mae", "test_rmse", "test_mse",
                                                     "val_mae", "val_loss") else "classification")
    # Pruning off: the per-epoch metric is not checked, however it is set.
    sweep(metric="test_r2", prune_metric="val_loss").check_task("regression")
    sweep(metric="test_r2", prune_metric="val_accuracy").check_task("regression")
    with pytest.raises(ConfigError, match="prune_metric = 'val_accuracy' is measured for classification only"):
        sweep(metric="test_r2", pruner="median", prune_metric="val_accuracy")


def test_a_test_split_metric_is_warned_about():
    assert sweep(metric="val_loss").selection_warning is None
    warning = sweep(metric="test_r2").selection_warning
    assert warning.startswith("warning: metric = test_r2 picks the best trial on the test split")
    assert "val_r2" in warning and "\n" not in warning


@pytest.mark.parametrize(("metric", "pruner"), [("test_r2", "none"), ("test_r2", "median"), ("val_r2", "median")])
def test_a_regression_sweep_on_r2_runs(metric, pruner, diabetes, tmp_path):
    from sklearn.metrics import r2_score

    config = validate_sweep({"name": "diabetes", "base": DIABETES, "metric": metric, "trials_per_round": 2,
                             "pruner": {"name": pruner, **({"n_startup_trials": 1} if pruner != "none" else {})},
                             "space": {"optimizer.lr": [0.003, 0.03]}, "sampler": "grid", "n_trials": 2})
    config.check_task(diabetes.spec.task)
    assert config.resolved_direction == "maximize" and config.epoch_metric == "val_r2"
    study, _ = run_engine(config, diabetes, tmp_path / "s")
    rows = summary(study, config)
    assert [r[1] for r in rows] == ["complete", "complete"] and all(-5 < r[2] < 1 for r in rows)
    for row in rows:
        folder = tmp_path / "s" / "trials" / f"{row[0]:04d}"
        with open(folder / "history.csv") as handle:
            history = list(csv.DictReader(handle))
        assert len(history) == 2 and all(-5 < float(h["val_r2"]) < 1 for h in history)
        if metric == "test_r2":
            assert row[2] == json.loads((folder / "evaluation.json").read_text())["metrics"]["r2"]
        else:
            assert row[2] == pytest.approx(float(history[-1]["val_r2"]))
    # val_r2 is the R^2 of the kept model on the validation split, as scikit-learn computes it.
    from tasks.sweep import load_trial_model

    trial_lr = json.loads(rows[0][3])["optimizer.lr"]
    model, _ = load_trial_model(tmp_path / "s", rows[0][0], config.trial_config({"optimizer.lr": trial_lr}),
                                diabetes.spec)
    with torch.no_grad():
        predicted = model(torch.as_tensor(diabetes.X_val)).squeeze(-1).numpy()
    with open(tmp_path / "s" / "trials" / f"{rows[0][0]:04d}" / "history.csv") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert float(last["val_r2"]) == pytest.approx(r2_score(diabetes.y_val, predicted), abs=1e-5)


def test_classification_history_keeps_its_columns(iris, tmp_path):
    config = sweep(n_trials=1, trials_per_round=1, sampler="random")
    run_engine(config, iris, tmp_path / "s")
    with open(tmp_path / "s" / "trials" / "0000" / "history.csv") as handle:
        header = next(csv.reader(handle))
    assert header == ["epoch", "train_loss", "val_loss", "val_accuracy", "val_mae", "lr", "seconds"]


def _failing_setup(config, data, sweep_dir, trials: int = 0):
    """Open the sweep folder as the flow does, start `trials` trials, then fail as a setup step would."""
    from tasks.run.rundir import run_lifecycle
    from tasks.sweep import journal_holds_trials, sweep_folder

    with pytest.raises(ModuleNotFoundError):
        with sweep_folder(sweep_dir, config, data.spec, journal_holds_trials) as (path, _), run_lifecycle(path):
            study = open_study(path, config)
            for _ in range(trials):
                study.ask()
            raise ModuleNotFoundError("No module named 'optuna'")


def test_a_failed_setup_leaves_no_sweep_folder_to_resume(iris, tmp_path):
    config = sweep(n_trials=1, trials_per_round=1)
    (tmp_path / "keep.txt").write_text("not the sweep's")
    _failing_setup(config, iris, tmp_path / "sweeps" / "iris")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # sweeps/ and sweeps/iris/ were created here
    # A folder that existed (empty) before stays, emptied of what the sweep wrote.
    (tmp_path / "empty").mkdir()
    _failing_setup(config, iris, tmp_path / "empty")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    # Once the study holds a trial there is something to resume: everything stays.
    _failing_setup(config, iris, tmp_path / "started", trials=1)
    assert {"sweep.yaml", "study.journal", "run.json"} <= {p.name for p in (tmp_path / "started").iterdir()}
    path, found = open_sweep_dir(tmp_path / "started", config, iris.spec)
    from tasks.sweep import holds_trials, journal_holds_trials

    assert found and journal_holds_trials(path) and holds_trials(open_study(path, config))
    # A new sweep in a fresh folder holds nothing to resume, though its journal exists.
    path, found = open_sweep_dir(tmp_path / "new", config, iris.spec)
    assert not found and not holds_trials(open_study(path, config)) and not journal_holds_trials(path)


@pytest.mark.slow
def test_cli_regression_sweep_on_test_r2_warns_and_a_failed_setup_does_not_claim_a_resume(
    prefect_api, tmp_path, capsys, monkeypatch
):
    import flows.sweep
    from flows.sweep import main

    config = tmp_path / "r2.yaml"
    config.write_text(yaml.safe_dump({"name": "diabetes-r2", "base": DIABETES, "metric": "test_r2", "n_trials": 2,
                                      "trials_per_round": 2, "space": {"optimizer.lr": [0.003, 0.03]},
                                      "sampler": "grid"}))
    monkeypatch.chdir(tmp_path)

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'optuna'")

    with monkeypatch.context() as patched:
        patched.setattr(flows.sweep, "open_study", missing)
        assert main(["--config", str(config)]) == 1
    assert "No module named 'optuna'" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()

    assert main(["--config", str(config)]) == 0
    out, err = capsys.readouterr()
    warning = "warning: metric = test_r2 picks the best trial on the test split"
    assert warning in err and warning in out
    assert f"sweep     {tmp_path / 'sweeps' / 'diabetes-r2'}\n" in out  # not "(resumed)"
    assert "trials    2 complete" in out
    assert main(["--config", str(config)]) == 0
    assert "(resumed)" in capsys.readouterr().out


def test_a_trial_makes_a_k_fold_estimate_only_for_a_number_of_folds(iris):
    """iris is small enough for evaluate.folds: auto to make one in a run; a trial makes none unless asked."""
    from schemas.loading import validate_config
    from schemas.trial import TrialRequest
    from tasks.sweep.trial import execute_trial

    def trial(evaluate: dict):
        config = validate_config({**BASE, "train": {**BASE["train"], "epochs": 1}, "evaluate": evaluate})
        return execute_trial(TrialRequest(number=0, params={}, config=config, metric="val_loss"), iris)

    auto = trial({}).report.uncertainty
    assert auto.resamples == 1000 and auto.intervals and not auto.cross_validation  # the run's intervals, no folds
    asked = trial({"folds": 2, "bootstrap": 200}).report.uncertainty
    assert asked.resamples == 200 and asked.folds == 2 and len(asked.cross_validation["accuracy"].values) == 2
