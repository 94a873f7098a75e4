"""What the Prefect UI sends as parameters: leftovers of another tab, JSON placeholders, schedule overrides.

No server here: the payloads are the ones Prefect 3.9's form and "+ Schedule" dialog were seen to send
(tests/test_ui.py drives them through a real server and browser).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.errors import ConfigError
from schemas.form import from_form, left_out_line, merge_overrides
from schemas.loading import load_config
from schemas.run import RunConfig
from schemas.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
# What the form sent (Prefect 3.9.1, ui-v2, parameter schema with oneOf) after switching tabs.
MLP_TO_CNN = {
    "init_strict": True, "freeze": "none", "train_bn": False, "kind": "cnn", "channels": [16, 32], "kernel_size": 3,
    "hidden": 64, "activation": "relu", "dropout": 0.1, "hidden_sizes": [128, 64],
}
ADAM_TO_SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 0, "betas": [0.9, 0.999]}
BUILTIN_TO_CSV = {"kind": "csv", "name": "digits", "path": "table.csv", "target": "y"}
# What the "+ Schedule" dialog stored with Parameter Overrides untouched.
UNTOUCHED_OVERRIDES = {"config": {"data": {"categorical": {"columns": {"__prefect_kind": "json"}}}}}


def test_values_of_the_previous_tab_are_left_out_and_named():
    values, left_out = from_form(RunConfig, {
        "model": MLP_TO_CNN, "optimizer": ADAM_TO_SGD, "data": {"source": BUILTIN_TO_CSV},
        "scheduler": {"name": "none", "step_size": 10},
    })
    config = RunConfig.model_validate(values)
    assert config.model.kind == "cnn" and config.model.channels == (16, 32) and config.model.dropout == 0.1
    assert config.optimizer.name == "sgd" and config.optimizer.lr == 0.01
    assert config.data.source.kind == "csv" and str(config.data.source.path) == "table.csv"
    assert config.scheduler is None
    assert left_out == [
        "model.hidden_sizes (mlp, not cnn)", "optimizer.betas (adam / adamw, not sgd)",
        "data.source.name (builtin, not csv)", "scheduler.step_size (step, not none)",
    ]
    assert left_out_line(left_out).startswith("left out values of another choice, which the form keeps when a tab")
    assert left_out_line([]) is None


def test_a_key_of_no_member_is_still_refused_naming_it():
    values, left_out = from_form(RunConfig, {"model": {"kind": "cnn", "chanels": [8]}, "trian": {"epochs": 2}})
    assert left_out == []
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(values)
    locations = {".".join(map(str, e["loc"])) for e in info.value.errors()}
    assert locations == {"model.cnn.chanels", "trian"}


def test_yaml_and_set_still_refuse_a_field_of_another_member(tmp_path):
    with pytest.raises(ConfigError, match="model.hidden_sizes"):
        load_config(None, ["model.kind=cnn", "model.hidden_sizes=[8]"])
    preset = tmp_path / "run.yaml"
    preset.write_text("model: {kind: linear, activation: relu}\n")
    with pytest.raises(ConfigError, match="model.activation"):
        load_config(preset)


def test_json_placeholders_are_parsed_and_empty_ones_left_out():
    columns = {"__prefect_kind": "json", "value": '{"island": "embedding"}'}
    values, _ = from_form(RunConfig, {"data": {"categorical": {"columns": columns, "max_categories": 50}}})
    assert values == {"data": {"categorical": {"columns": {"island": "embedding"}, "max_categories": 50}}}
    for empty in ({"__prefect_kind": "json"}, {"__prefect_kind": "json", "value": ""}, {"__prefect_kind": "json", "value": None}):
        values, _ = from_form(RunConfig, {"data": {"categorical": {"columns": empty}}})
        assert RunConfig.model_validate(values).data.categorical.columns == {}
    with pytest.raises(ConfigError, match=r"config.data.categorical.columns: the JSON given in the form does not parse"):
        from_form(RunConfig, {"data": {"categorical": {"columns": {"__prefect_kind": "json", "value": "{oops"}}}})


def test_schedule_overrides_are_laid_over_the_deployments_config():
    deployment = {
        "name": "iris", "data": {"source": {"kind": "builtin", "name": "iris"}}, "model": {"kind": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 40, "batch_size": 16},
    }
    assert merge_overrides(RunConfig, deployment, UNTOUCHED_OVERRIDES["config"]) == {**deployment, "data": {
        "source": {"kind": "builtin", "name": "iris"}, "categorical": {}}}
    merged = merge_overrides(RunConfig, deployment, {"train": {"epochs": 2}, "model": {"hidden_sizes": [8]}})
    assert merged["train"] == {"epochs": 2, "batch_size": 16} and merged["model"] == {"kind": "mlp", "hidden_sizes": [8]}
    # Another model kind: the override's section alone (mlp's hidden_sizes would not fit a cnn).
    assert merge_overrides(RunConfig, deployment, {"model": {"kind": "linear"}})["model"] == {"kind": "linear"}
    assert merge_overrides(RunConfig, deployment, {"__prefect_kind": "json"}) == deployment


def test_a_sweep_config_from_the_form():
    sweep = load_sweep_config_values()
    sweep["base"]["optimizer"] = ADAM_TO_SGD
    sweep["space"] = {"__prefect_kind": "json", "value": '{"optimizer.lr": {"kind": "float", "low": 0.001, "high": 0.1}}'}
    values, left_out = from_form(SweepConfig, sweep)
    config = SweepConfig.model_validate(values)
    assert config.base.optimizer.name == "sgd" and list(config.space) == ["optimizer.lr"]
    assert left_out == ["base.optimizer.betas (adam / adamw, not sgd)"]


def load_sweep_config_values() -> dict:
    from schemas.run import without_nulls
    from schemas.sweep import load_sweep_config

    return without_nulls(load_sweep_config(ROOT / "configs/sweep_digits.yaml").model_dump(mode="json"))


def test_the_flows_take_what_the_form_sends_and_keep_their_form():
    from prefect.utilities.callables import parameter_schema

    from flows.sweep import sweep_flow
    from flows.train import train_flow

    validated = train_flow.validate_parameters({"config": {"model": MLP_TO_CNN, "optimizer": ADAM_TO_SGD}})
    assert validated["config"].model.kind == "cnn" and validated["config"].optimizer.name == "sgd"
    assert train_flow.validate_parameters({"config": RunConfig()})["config"] == RunConfig()  # the command line's
    with pytest.raises(Exception, match="chanels"):
        train_flow.validate_parameters({"config": {"model": {"kind": "cnn", "chanels": [8]}}})
    # The parameter's schema is the run config's: the form is unchanged by taking more.
    schema = parameter_schema(train_flow.fn).model_dump_for_openapi()
    assert schema["properties"]["config"]["$ref"] == "#/definitions/RunConfig"
    assert parameter_schema(sweep_flow.fn).model_dump_for_openapi()["properties"]["config"]["$ref"] == "#/definitions/SweepConfig"


def test_a_custom_model_of_a_deployment_run_needs_the_serving_process_to_allow_its_module(monkeypatch):
    from flows._deployed import check_allowed_code

    custom = {"kind": "custom", "target": "mypkg.nets:make"}
    run = RunConfig.model_validate({"model": custom})
    with pytest.raises(ConfigError, match=r"'mypkg.nets' is not one; start the serving process with PYTORCH_WORKFLOW_TRUSTED_MODULES=mypkg.nets"):
        check_allowed_code(run)
    sweep = load_sweep_config_values()
    sweep["space"] = {"model": {"kind": "categorical", "choices": [{"kind": "mlp"}, custom]}}
    with pytest.raises(ConfigError, match="mypkg.nets:make"):  # a choice of the sweep's space counts too
        check_allowed_code(SweepConfig.model_validate(sweep))
    monkeypatch.setenv("PYTORCH_WORKFLOW_TRUSTED_MODULES", "mypkg")
    check_allowed_code(run)
    check_allowed_code(SweepConfig.model_validate(sweep))
    check_allowed_code(RunConfig())
