"""Deployments against a real Prefect server: serve, schedule, trigger with overrides, artifacts, bad parameters.

The session's `prefect server start` (tests/conftest.py `prefect_server`, on a
free loopback port with its own PREFECT_HOME) serves every deployment with
`python -m deployments.serve` (`served`); both are stopped by PID at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from deployments.definitions import DEPLOYMENTS, find
from deployments.serve import PREFECT_YAML, prefect_yaml
from schemas.loading import load_config
from schemas.run import form_values

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "deployed-smoke",
    "data": {"source": {"kind": "builtin", "name": "iris"}},
    "model": {"kind": "mlp", "hidden_sizes": [8]},
    "train": {"epochs": 3, "batch_size": 16},
    "device": {"name": "cpu"},
}


def test_prefect_yaml_is_generated_from_the_definitions():
    assert PREFECT_YAML.read_text() == prefect_yaml(), "run: python -m deployments.serve --write-prefect-yaml"
    document = yaml.safe_load(PREFECT_YAML.read_text())
    assert [d["name"] for d in document["deployments"]] == [s.name for s in DEPLOYMENTS]
    nightly = next(d for d in document["deployments"] if d["name"] == "digits-mlp-nightly")
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "slug": "digits-mlp-nightly"}] and nightly["entrypoint"] == "flows/train.py:train_flow"
    assert nightly["parameters"]["config"] == form_values(load_config(ROOT / "configs/digits_mlp.yaml", ["name=digits-mlp-nightly"]))
    assert nightly["parameters"]["config"]["scheduler"] == {"name": "none"}  # the form's tab for no scheduler


def test_an_unknown_deployment_is_a_clear_error(capsys):
    from deployments.serve import main

    assert main(["--only", "nope", "--list"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no deployment named 'nope'; there are: " + ", ".join(s.name for s in DEPLOYMENTS)
    )


def _deployment(client, name: str):
    return next(d for d in client.read_deployments() if d.name == name)


@pytest.mark.slow
def test_a_scheduled_deployment_has_its_next_runs_scheduled(served):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + 90  # the server's scheduler service fills the schedule within seconds
    while True:
        with get_client(sync_client=True) as client:
            deployment = _deployment(client, "iris-hourly")
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
        scheduled = sorted(r.expected_start_time for r in runs if r.state_name == "Scheduled")
        if len(scheduled) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert deployment.tags == list(find("iris-hourly").tags)
    assert deployment.parameters["config"] == form_values(load_config(ROOT / "configs/iris.yaml"))
    assert len(scheduled) >= 3
    gaps = {(b - a).total_seconds() for a, b in zip(scheduled, scheduled[1:])}
    assert gaps == {3600.0}


@pytest.mark.slow
def test_a_triggered_run_with_overrides_completes_and_publishes_artifacts(served, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    run_dir = tmp_path / "run"
    flow_run = run_deployment(
        "train/digits-mlp", parameters={"config": TINY, "run_dir": str(run_dir)}, flow_run_name="Named in the form",
        timeout=240, poll_interval=1,
    )
    assert flow_run.state_name == "Completed", flow_run.state.message
    # The run's own name (the form's Run Name) names it, as a folder name, instead of config.name.
    config = load_config(run_dir / "config.yaml")
    assert (config.name, config.data.source.name, config.model.hidden_sizes, config.train.epochs) == (
        "Named-in-the-form", "iris", (8,), 3,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 3 and metrics["data"]["source"] == "builtin:iris"
    assert (run_dir / "model" / "bundle.json").exists()

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).name == "Named in the form"  # the form's Run Name is kept
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert None not in by_key and len(by_key) == len(artifacts)  # every artifact keyed, each key once
    assert set(by_key) == {f"named-in-the-form-{part}" for part in ("report", "plots", "history", "model", "progress")}
    report = by_key["named-in-the-form-report"].data
    assert "# Run `Named-in-the-form`" in report and "| accuracy |" in report and "| | |" not in report
    assert f"{metrics['test']['accuracy']:.4f}" in report and f"`{(run_dir / 'model').resolve()}`" in report
    # The plots are embedded images that render in the UI's markdown, not links to local files.
    plots = by_key["named-in-the-form-plots"].data
    assert plots.count("](data:image/png;base64,") == 3 and "Confusion matrix" in plots
    assert str((run_dir / "model").resolve()) in by_key["named-in-the-form-model"].data
    history = by_key["named-in-the-form-history"].data
    rows = json.loads(history) if isinstance(history, str) else history
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert by_key["named-in-the-form-progress"].data == 100.0
    for artifact in artifacts:  # no link a browser will not open
        assert "file://" not in str(artifact.data) and "sqlite:///" not in str(artifact.data), artifact.key


@pytest.mark.slow
def test_invalid_parameters_fail_at_once_with_the_schemas_message(served):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    # What the JSON schema can express is refused when the run is created ...
    for bad, message in (
        ({"train": {"epochs": 0}}, "config.train.epochs"),
        ({"trian": {"epochs": 3}}, "'trian' was unexpected"),
        ({"optimizer": {"name": "adam", "lr": -1}}, "field 'config.optimizer.lr'. Failure reason: -1 is less than"),
        # a key of no optimizer, beside a field of another one (left out by the flow): named
        ({"optimizer": {"name": "sgd", "betas": [0.9, 0.99], "lrr": 1}}, "field 'config.optimizer.lrr'"),
    ):
        with pytest.raises(PrefectHTTPStatusError, match=message):
            run_deployment("train/digits-mlp", parameters={"config": bad}, timeout=0)
    # ... and what only the pydantic model checks fails the run before any stage, never defaults.
    flow_run = run_deployment(
        "train/digits-mlp", parameters={"config": {**TINY, "device": {"name": "gpu"}}}, timeout=240, poll_interval=1
    )
    assert flow_run.state_name == "Failed"
    assert "config.device.name: Value error, expected auto, cpu, cuda, cuda:N or mps" in flow_run.state.message
    # A device that is named correctly but not present fails before any task, in one line, keeping its name.
    missing = run_deployment(
        "train/digits-mlp", parameters={"config": {**TINY, "device": {"name": "cuda:7"}}},
        flow_run_name="asks-for-a-gpu", timeout=240, poll_interval=1,
    )
    assert missing.state_name == "Failed"
    assert missing.state.message == (
        "ConfigError: device.name = 'cuda:7': not available on this machine; available: cpu"
    )
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(missing.id).name == "asks-for-a-gpu"
        # The run's log says the error in one line: no traceback from Prefect's engine.
        deadline, logs = time.monotonic() + 30, []
        while time.monotonic() < deadline:  # the served run's logs reach the server in batches
            logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[missing.id])))]
            if any("device.name = 'cuda:7': not available" in m for m in logs) and any("Finished" in m for m in logs):
                break
            time.sleep(1)
        assert any("device.name = 'cuda:7': not available" in m for m in logs), logs
        assert not any("Traceback" in m for m in logs), logs
        for run in (flow_run, missing):
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            assert tasks == []  # no stage ran



def test_the_report_links_only_web_addresses_and_shows_paths_as_text(tmp_path):
    from schemas.tracking import TrackingResult
    from tasks.run.artifacts import run_links, run_places, shown_links

    summary = SimpleNamespace(bundle=str(tmp_path / "model"))
    assert run_links() == {} and run_places(summary) == {"model bundle": str((tmp_path / "model").resolve())}
    served = TrackingResult(mlflow_run_id="abc", mlflow_run_url="http://127.0.0.1:5000/#/experiments/1/runs/abc",
                            tensorboard_dir=str(tmp_path / "tb"))
    assert run_links(served) == {"MLflow run": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}
    assert run_places(summary, served)["TensorBoard log dir"] == str((tmp_path / "tb").resolve())
    local = TrackingResult(mlflow_run_id="abc", mlflow_tracking_uri="sqlite:///mlflow.db")
    assert run_links(local) == {}
    assert run_places(SimpleNamespace(bundle=None), local) == {"MLflow run": "abc in sqlite:///mlflow.db"}
    shown = shown_links(summary, served)
    assert shown["MLflow run"].startswith("[http://") and shown["model bundle"] == f"`{(tmp_path / 'model').resolve()}`"


def test_a_local_mlflow_store_is_linked_through_the_mlflow_ui_url():
    from schemas.tracking import TrackingConfig
    from tasks.run.mlflow_logger import MLflowLogger

    tracker = MLflowLogger(TrackingConfig(mlflow_ui_url="http://127.0.0.1:5000/"), run_name="r", params={})
    tracker._uri, tracker._experiment_id = "sqlite:///mlflow.db", "1"
    tracker._run = SimpleNamespace(info=SimpleNamespace(run_id="abc", artifact_uri="mlruns/1/abc"))
    assert tracker.result().mlflow_run_url == "http://127.0.0.1:5000/#/experiments/1/runs/abc"
    with pytest.raises(ValueError, match="mlflow_ui_url"):
        TrackingConfig(mlflow_ui_url="file:///tmp/mlruns")


@pytest.mark.parametrize("name", [spec.name for spec in DEPLOYMENTS])
def test_every_deployment_builds_and_its_parameters_fit_the_flows_schema(name):
    import jsonschema
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from deployments.serve import _flow, build
    from schemas.run import RunConfig

    deployment = build(find(name))
    assert deployment.name == name and deployment.tags == list(find(name).tags)
    # What the server checks against: a new deployment's parameters as the schema stands (no null for an
    # optional number), a run's parameters with Prefect's fixes for null. Both must pass.
    schema = parameter_schema(_flow(find(name))).model_dump_for_openapi()
    jsonschema.validate(deployment.parameters, schema)
    validate(deployment.parameters, schema, raise_on_error=True)
    # The form's values are the preset: nothing lost by leaving out nulls or by the "none" scheduler.
    config = deployment.parameters["config"]
    if find(name).flow == "train":
        assert RunConfig.model_validate(config) == load_config(ROOT / find(name).config, list(find(name).overrides))
    else:
        from schemas.sweep import SweepConfig, load_sweep_config

        assert SweepConfig.model_validate(config) == load_sweep_config(ROOT / find(name).config)
    schedules = [s.schedule for s in deployment.schedules]
    spec = find(name)
    if spec.cron:
        assert [s.cron for s in schedules] == [spec.cron]
    elif spec.interval_seconds:
        assert [s.interval.total_seconds() for s in schedules] == [spec.interval_seconds]
    else:
        assert schedules == []


REQUIRED_INPUTS = {"path", "target"}  # a data file and its target column, a custom model's factory: no default


def _undocumented(flow) -> list[str]:
    """Fields of a flow's parameter form without a description or a default, or free-form."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    problems = []
    for model, definition in schema.get("definitions", {}).items():
        required = set(definition.get("required", ()))
        for field, prop in definition.get("properties", {}).items():
            where = f"{model}.{field}"
            if "description" not in prop:
                problems.append(f"{where}: no description")
            if field in required and field not in REQUIRED_INPUTS:
                problems.append(f"{where}: no default")
            if prop.get("type") == "object" and "properties" not in prop and "additionalProperties" not in prop:
                problems.append(f"{where}: free-form object, not editable in the form")
    return problems


def test_every_field_of_the_train_form_has_a_description_and_a_default():
    from flows.train import train_flow

    assert _undocumented(train_flow) == []


def _definition(schema: dict, ref: dict) -> dict:
    return schema["definitions"][ref["$ref"].rsplit("/", 1)[-1]]


def test_the_form_shows_the_default_model_optimizer_and_scheduler_as_fields():
    """The parameter schema the UI draws: tabs titled by tag, fields with descriptions, no type switches."""
    from prefect.utilities.callables import parameter_schema

    from flows.train import train_flow

    schema = parameter_schema(train_flow.fn).model_dump_for_openapi()
    run = schema["definitions"]["RunConfig"]["properties"]
    for section, tag, fields in (
        ("model", "kind", {"hidden_sizes", "activation", "dropout"}),
        ("optimizer", "name", {"lr", "betas", "weight_decay"}),
    ):
        default = _definition(schema, run[section]["anyOf"][0])
        assert default["title"] == {"model": "mlp", "optimizer": "adam"}[section]
        assert default["properties"][tag]["enum"] == [default["title"]]  # a drop-down, not a text box
        assert fields <= set(default["properties"])
        for name in fields:
            assert default["properties"][name]["description"], f"{section}.{name}"
    assert [_definition(schema, o)["title"] for o in run["model"]["anyOf"]] == [
        "mlp", "cnn", "tinyvgg", "resnet", "linear / logistic", "torchvision", "custom",
    ]
    assert _definition(schema, run["data"])["title"] == "Data"  # not the class name DataConfig
    adam = _definition(schema, run["optimizer"]["anyOf"][0])
    assert adam["properties"]["lr"]["type"] == "number"
    # The bound applies once the tag picked this member, so a refusal names the field (next test).
    assert adam["if"] == {"properties": {"name": {"enum": ["adam"]}}}
    assert adam["then"]["properties"]["lr"] == {"exclusiveMinimum": 0, "maximum": 10}
    # No scheduler is a tab of its own, not a null switch; optional numbers are plain inputs.
    assert [o.get("title") or _definition(schema, o)["title"] for o in run["scheduler"]["anyOf"]] == [
        "none", "step", "cosine", "plateau",
    ]
    threads = schema["definitions"]["DeviceConfig"]["properties"]["threads"]
    assert threads["anyOf"] == [{"type": "integer"}, {"const": "auto", "type": "string"}]  # no null switch
    folds = schema["definitions"]["EvaluateConfig"]["properties"]["folds"]  # a number or auto, as threads
    assert folds["anyOf"] == threads["anyOf"] and folds["default"] == "auto"
    clip = schema["definitions"]["TrainConfig"]["properties"]["grad_clip_norm"]  # optional, default none
    assert clip["type"] == "number" and "anyOf" not in clip and "default" not in clip
    text = json.dumps(schema)
    assert '{"type": "null"}' not in text
    for name in ("run_dir", "resume", "force"):
        assert schema["properties"][name]["description"]


def test_the_form_values_validate_the_way_the_server_checks_them():
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.train import train_flow
    from schemas.run import RunConfig

    schema = parameter_schema(train_flow.fn).model_dump_for_openapi()
    values = find("digits-mlp").parameters()["config"]
    ok = [
        {**values, "train": {**values["train"], "grad_clip_norm": None}},  # an empty optional input
        {**values, "device": {**values["device"], "threads": 1}},
        {**values, "device": {**values["device"], "threads": "auto"}},
        {**values, "evaluate": {**values["evaluate"], "folds": 3}},
        {**values, "evaluate": {**values["evaluate"], "folds": "auto"}},
        {**values, "scheduler": {"name": "step", "step_size": 5}},
        {**values, "optimizer": {"name": "sgd", "lr": 0.05}},
    ]
    for config in ok:
        assert validate({"config": config}, schema) == []
    assert validate({"config": {**values, "train": {**values["train"], "epochs": 0}}}, schema)
    # A bound inside a tagged union: the server's message names the field and the bound.
    negative = {**values, "optimizer": {**values["optimizer"], "lr": -1}}
    with pytest.raises(Exception, match=r"field 'config.optimizer.lr'. Failure reason: -1 is less than or equal to the minimum of 0"):
        validate({"config": negative}, schema, raise_on_error=True)
    # An unknown key inside a tagged union: named as a field too, not "not valid under any of the given schemas".
    typo = {**values, "optimizer": {**values["optimizer"], "lrr": 1}}
    with pytest.raises(Exception, match=r"field 'config.optimizer.lrr'. Failure reason: 1 should not be valid"):
        validate({"config": typo}, schema, raise_on_error=True)
    wide = {**values, "model": {"kind": "cnn", "kernel_size": 99}}
    with pytest.raises(Exception, match=r"field 'config.model.kernel_size'. Failure reason: 99 is greater than the maximum of 11"):
        validate({"config": wide}, schema, raise_on_error=True)
    # The form's "none" scheduler is no scheduler.
    assert RunConfig.model_validate(values).scheduler is None
    assert RunConfig.model_validate({"scheduler": {"name": "none"}}) == RunConfig()
