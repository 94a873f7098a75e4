"""The Prefect UI's payloads against a real server: switched tabs, "+ Schedule" overrides, names, errors.

The payloads are what Prefect 3.9's form and schedule dialog were seen to send (tests/test_form.py
lists them), sent through Prefect's API to the deployments that `python -m deployments.serve` serves
(tests/conftest.py `served`); tests/test_browser.py clicks the same in Chromium.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from schemas.loading import load_config
from tests.conftest import prefect_client_on
from tests.test_form import ADAM_TO_SGD, MLP_TO_CNN, UNTOUCHED_OVERRIDES

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _deployment(client, name: str):
    return client.read_deployment_by_name(f"{'sweep' if 'sweep' in name else 'train'}/{name}")


def _wait(client, run_ids, timeout: float = 300):
    """The flow runs once every one is final."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.read_flow_run(run_id) for run_id in run_ids]
        if all(run.state_type.value in FINAL for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def _logs(client, run_id, until: str, timeout: float = 30) -> list[str]:
    """The run's log messages, once one holds `until` (served runs send their logs in batches)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
        if any(until in message for message in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(1)


def _task_runs(client, run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))


def _artifacts(client, run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {artifact.key: artifact for artifact in artifacts}


def _run_folder(client, run_id) -> Path:
    """The run folder that the run's log names in its closing summary (`run       <folder>`)."""
    (summary,) = [m for m in _logs(client, run_id, "run       ") if m.startswith("run       ")]
    return Path(summary.splitlines()[0].split(maxsplit=1)[1])


def _form_config(client, name: str, **sections) -> dict:
    """The whole config the form sends: the deployment's preset with `sections` as the user left them."""
    config = json.loads(json.dumps(_deployment(client, name).parameters["config"]))
    config["train"] = {**config["train"], "epochs": 2}
    config.update(sections)
    return config


@pytest.fixture(scope="module")
def launched(served_deployments, tmp_path_factory):
    """Every flow run of this module, created at once (the served runs start in parallel); and a schedule.

    Yields SimpleNamespace: `runs` (name -> the created flow run), `schedule`, `overrides`, and the
    paths the runs were given. The schedule is deleted at the end.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    folder = tmp_path_factory.mktemp("ui-runs")
    table = folder / "tiny.csv"
    rows = [f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]},{i % 2}" for i in range(60)]
    table.write_text("x1,x2,colour,label\n" + "\n".join(rows) + "\n")
    overrides = json.loads(json.dumps(UNTOUCHED_OVERRIDES))
    overrides["config"]["train"] = {"epochs": 2}
    with prefect_client_on(served_deployments.api), get_client(sync_client=True) as client:
        train, sweep = _deployment(client, "digits-mlp"), _deployment(client, "digits-sweep")
        image = _form_config(client, "digits-mlp", model=MLP_TO_CNN, optimizer=ADAM_TO_SGD,
                             scheduler={"name": "step", "step_size": 1, "gamma": 0.5})
        image["device"] = {**image["device"], "name": "cpu"}
        tabular = _form_config(client, "digits-mlp")  # data source builtin -> csv; `name` is the builtin's
        tabular["data"] = {**tabular["data"], "source": {"kind": "csv", "name": "digits", "path": str(table), "target": "label"}}
        no_file = _form_config(client, "digits-mlp")
        no_file["data"] = {**no_file["data"], "source": {"kind": "csv", "path": str(folder / "nowhere.csv"), "target": "y"}}
        custom = _form_config(client, "digits-mlp", model={"kind": "custom", "target": "tests.rank_helpers:anything"})
        sweep_config = json.loads(json.dumps(sweep.parameters["config"]))
        sweep_config.update(n_trials=2, parallelism=1, trials_per_round=2)
        sweep_config["base"]["train"] = {**sweep_config["base"]["train"], "epochs": 2}
        runs = {
            name: client.create_flow_run_from_deployment(deployment.id, parameters=parameters, name=name)
            for name, deployment, parameters in (
                ("Form: cnn, sgd, step", train, {"config": image}),
                ("form-csv", train, {"config": tabular}),
                ("no-file", train, {"config": no_file}),
                ("custom", train, {"config": custom}),
                ("sweep-2trials", sweep, {"config": sweep_config, "sweep_dir": str(folder / "sweep")}),
            )
        }
        # The first run at the anchor: far enough ahead for the scheduler (every 2 s) to see the schedule before
        # it passes (else the first run is an hour later), near enough to come while the runs above run.
        soon = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=20)
        (schedule,) = client.create_deployment_schedules(train.id, [DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=timedelta(hours=1), anchor_date=soon, timezone="UTC"),
            active=True, parameters=overrides,
        )])
    try:
        yield SimpleNamespace(runs=runs, schedule=schedule, overrides=overrides, table=table, folder=folder,
                              sweep_name=sweep_config["name"], train_id=train.id, first_run_at=soon)
    finally:
        with prefect_client_on(served_deployments.api), get_client(sync_client=True) as client:
            client.delete_deployment_schedule(train.id, schedule.id)


def test_runs_from_the_form_after_switching_tabs_complete_under_their_own_names(served, launched):
    """mlp -> cnn, adam -> sgd, none -> step, builtin -> csv, with the stale fields the form sent left in."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = _wait(client, [launched.runs[name].id for name in ("Form: cnn, sgd, step", "form-csv")])
        for run in runs:
            assert run.state_type.value == "COMPLETED", (run.name, run.state.message)
        assert [run.name for run in runs] == ["Form: cnn, sgd, step", "form-csv"]
        logs = _logs(client, runs[0].id, "run       ")
        assert sum("left out values of another choice" in m for m in logs) == 1, logs
        assert any("model.hidden_sizes (mlp, not cnn), optimizer.betas (adam / adamw, not sgd)" in m for m in logs)
        (summary,) = [m for m in logs if m.startswith("run       ")]  # the log ends as the command line's output
        folders = [_run_folder(client, run.id) for run in runs]
        assert "baseline" in summary and f"bundle    {folders[0] / 'model'}" in summary
        assert any("data.source.name (builtin, not csv)" in m for m in _logs(client, runs[1].id, "left out"))
        keys = [set(_artifacts(client, run.id)) for run in runs]
    # Each run's folder, config and artifacts go by the run's own name (as a folder name): no two share keys.
    assert folders[0].name.endswith("-Form-cnn-sgd-step") and folders[1].name.endswith("-form-csv")
    config = load_config(folders[0] / "config.yaml")
    assert (config.name, config.model.kind, config.optimizer.name, config.scheduler.name) == (
        "Form-cnn-sgd-step", "cnn", "sgd", "step")
    tabular_config = load_config(folders[1] / "config.yaml")
    assert tabular_config.data.source.kind == "csv" and tabular_config.data.source.path == launched.table
    assert keys[0] == {f"form-cnn-sgd-step-{part}" for part in ("report", "plots", "history", "model", "progress")}
    assert keys[1] == {f"form-csv-{part}" for part in ("report", "plots", "history", "model", "progress")}


def test_a_schedule_added_with_untouched_overrides_runs_the_deployments_config(served, launched):
    """The "+ Schedule" dialog's hidden `{"__prefect_kind": "json"}` override, and an override it is given."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        deadline, mine = time.monotonic() + 90, []
        while not mine and time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[launched.train_id])))
            mine = [run for run in runs if run.created_by and run.created_by.id == launched.schedule.id]
            time.sleep(1)
        assert mine, "the scheduler made no run in 90 s"
        first = min(mine, key=lambda run: run.expected_start_time)
        assert first.expected_start_time == launched.first_run_at, "the scheduler saw the schedule after its anchor"
        (run,) = _wait(client, [first.id])
        assert run.state_type.value == "COMPLETED", run.state.message
        folder = _run_folder(client, run.id)
    assert run.parameters == launched.overrides  # what Prefect's scheduler handed the flow: the override alone
    # The flow laid it over the deployment's preset: digits-mlp with 2 epochs, not the schema's defaults.
    config = load_config(folder / "config.yaml")
    preset = load_config(Path(__file__).resolve().parents[1] / "configs/digits_mlp.yaml", ["train.epochs=2"])
    assert config == preset and run.name == "digits-mlp"


def test_a_sweep_started_by_hand_keeps_its_name_and_shows_its_results(served, launched):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (run,) = _wait(client, [launched.runs["sweep-2trials"].id])
        assert run.state_type.value == "COMPLETED", run.state.message
        assert run.name == "sweep-2trials"  # not sweep-<config.name>
        artifacts = _artifacts(client, run.id)
        logs = _logs(client, run.id, "sweep     ")
    name, sweep_dir = launched.sweep_name, launched.folder / "sweep"
    assert set(artifacts) == {f"sweep-{name}", f"sweep-{name}-best", f"sweep-{name}-plots"}
    table = artifacts[f"sweep-{name}"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert len(rows) == 2 and all(len(repr(row["optimizer.lr"])) <= len("0.0001234") for row in rows)
    assert all(row["val_accuracy"] == round(row["val_accuracy"], 4) for row in rows)
    best = artifacts[f"sweep-{name}-best"]
    assert best.description.startswith(f"Sweep {name}: best trial ") and "val_accuracy 0." in best.description
    assert f"`{(sweep_dir / 'best_model').resolve()}`" in best.data
    assert f"`{(sweep_dir / 'best_config.yaml').resolve()}`" in best.data
    assert artifacts[f"sweep-{name}-plots"].data.count("](data:image/png;base64,") == 2
    assert any(m.startswith("sweep     ") and "best      trial" in m for m in logs)


def test_a_missing_data_file_fails_before_any_task_with_one_line(served, launched):
    from prefect.client.orchestration import get_client

    missing = launched.folder / "nowhere.csv"
    with get_client(sync_client=True) as client:
        (run,) = _wait(client, [launched.runs["no-file"].id])
        assert run.state_type.value == "FAILED"
        assert run.state.message == f"DataError: data file not found: {missing}"
        assert _task_runs(client, run.id) == []  # not select-device: no stage ran
        logs = _logs(client, run.id, "Finished in state")
    assert sum(str(missing) in m for m in logs) == 1, logs
    assert not any("unexpected exception" in m or "Traceback" in m for m in logs), logs


def test_a_custom_model_runs_only_from_a_module_the_serving_process_allows(served, launched):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (run,) = _wait(client, [launched.runs["custom"].id])
        assert run.state_type.value == "FAILED"
        assert run.state.message == (
            "ConfigError: model.target = 'tests.rank_helpers:anything': a run started from a deployment imports "
            "only modules the serving process allows, and 'tests.rank_helpers' is not one; start the serving process "
            "with PYTORCH_WORKFLOW_TRUSTED_MODULES=tests.rank_helpers to allow it"
        )
        assert _task_runs(client, run.id) == []
