"""Config schemas: defaults, presets, overrides and the messages for bad config."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from schemas import ConfigError, RunConfig, load_config
from schemas.loading import apply_overrides, config_to_yaml, parse_override

ROOT = Path(__file__).resolve().parents[1]
# Run presets; sweep presets (sweep_*.yaml) are validated in tests/test_sweep.py.
PRESETS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sweep_"))


def test_defaults_are_the_documented_run():
    config = RunConfig()
    assert config.data.source.kind == "builtin" and config.data.source.name == "digits"
    assert config.model.kind == "mlp"
    assert config.optimizer.name == "adam" and config.optimizer.lr == 1e-3
    assert config.device.name == "auto"
    assert config.seed == 0


def test_configs_are_frozen_and_forbid_unknown_keys():
    config = RunConfig()
    with pytest.raises(pydantic.ValidationError):
        config.seed = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        RunConfig.model_validate({"optimizer": {"name": "adam", "lrr": 0.1}})


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_validates_and_round_trips(preset: Path, tmp_path: Path):
    config = load_config(preset)
    dumped = tmp_path / "again.yaml"
    dumped.write_text(config_to_yaml(config))
    assert load_config(dumped) == config


def test_presets_cover_the_documented_set():
    names = {p.stem for p in PRESETS}
    assert {"digits_mlp", "digits_cnn", "iris", "breast_cancer", "diabetes"} <= names


def test_default_preset_equals_builtin_default():
    assert load_config(ROOT / "configs" / "digits_mlp.yaml") == RunConfig()


def test_overrides_parse_yaml_values():
    assert parse_override("optimizer.lr=0.01") == ("optimizer.lr", 0.01)
    assert parse_override("model.hidden_sizes=[64, 32]") == ("model.hidden_sizes", [64, 32])
    assert parse_override("train.progress=false") == ("train.progress", False)
    assert parse_override("scheduler=null") == ("scheduler", None)


def test_overrides_apply_on_top_of_yaml(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text("optimizer: {name: sgd, lr: 0.1}\ntrain: {epochs: 3}\n")
    config = load_config(preset, ["optimizer.lr=0.05", "train.batch_size=8", "seed=7"])
    assert config.optimizer.name == "sgd" and config.optimizer.lr == 0.05
    assert config.train.epochs == 3 and config.train.batch_size == 8 and config.seed == 7


def test_override_without_tag_keeps_the_default_choice():
    config = load_config(None, ["optimizer.lr=0.01", "data.source.name=iris"])
    assert config.optimizer.name == "adam" and config.optimizer.lr == 0.01
    assert config.data.source.kind == "builtin" and config.data.source.name == "iris"


def test_switching_a_choice_drops_the_old_choices_settings(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {kind: mlp, hidden_sizes: [8], dropout: 0.2}\n")
    config = load_config(preset, ["model.kind=cnn", "model.channels=[4]"])
    assert config.model.kind == "cnn" and config.model.channels == (4,)
    assert config.model.dropout == 0.2  # shared by both choices, so kept
    config = load_config(None, ["optimizer.lr=0.05", "optimizer.name=sgd"])
    assert config.optimizer.name == "sgd" and config.optimizer.lr == 0.05


def test_overrides_do_not_mutate_their_input():
    data = {"optimizer": {"name": "adam", "lr": 0.1}}
    apply_overrides(data, ["optimizer.lr=0.2"])
    assert data == {"optimizer": {"name": "adam", "lr": 0.1}}


def test_device_shorthand():
    assert load_config(None, ["device=cpu"]).device.name == "cpu"
    assert load_config(None, ["device=cuda:1"]).device.name == "cuda:1"


def test_scheduler_can_be_enabled_by_name():
    config = load_config(None, ["scheduler.name=cosine"])
    assert config.scheduler is not None and config.scheduler.name == "cosine"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.lrr=0.1"], "optimizer.lrr: unknown key (did you mean optimizer.lr?)"),
        (["foo=1"], "foo: unknown key"),
        (["optimizer.lr=-1"], "optimizer.lr = -1: Input should be greater than 0"),
        (["train.epochs=seven"], "train.epochs = 'seven'"),
        (["model.kind=mlpp"], "model.kind = 'mlpp': expected one of 'mlp', 'cnn'"),
        (["scheduler.name=warp"], "scheduler.name = 'warp'"),
        (["data.source.kind=csv"], "data.source.path: required key is missing"),
        (["device=tpu"], "device.name"),
        (["model.hidden_sizes=[0]"], "model.hidden_sizes.0 = 0"),
        (["data.split.val=0.5", "data.split.test=0.45"], "data.split: val + test"),
        (["data.task=classification", "loss.name=mse"], "loss.name='mse' is a regression loss"),
        (["data.task=regression", "train.monitor=val_accuracy"], "train.monitor='val_accuracy'"),
        (["data.task=regression", "model.kind=logistic"], "model.kind='logistic'"),
        (["train.early_stopping.patiense=2"], "train.early_stopping.patiense: unknown key"),
        (["optimizer.lr"], "expected KEY=VALUE"),
    ],
)
def test_bad_config_names_the_key(overrides: list[str], expected: str):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


def test_device_error_lists_the_choices():
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda, cuda:N or mps"):
        load_config(None, ["device=tpu"])


def test_yaml_errors_name_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml \(line \d+, column \d+\): invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)


def test_errors_in_a_file_name_the_file(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=r"invalid config in .*p\.yaml: train\.epochs = 0"):
        load_config(preset)


def test_several_problems_are_listed_together():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=0", "optimizer.lr=0"])
    text = str(info.value)
    assert "train.epochs" in text and "optimizer.lr" in text


def test_a_partial_section_keeps_the_fields_defaults():
    # data.retry defaults to 2 retries; setting only the delay must not reset the count.
    config = load_config(None, ["data.retry.delay_seconds=0"])
    assert config.data.retry.retries == 2 and config.data.retry.delay_seconds == 0
    assert load_config(None, ["train.early_stopping.patience=9"]).train.early_stopping.enabled is True


def test_an_unnamed_run_is_named_after_its_data_and_model():
    assert load_config().name == "digits-mlp"
    csv = "data.source={kind: csv, path: /data/My Penguins (2024).csv, target: species}"
    assert load_config(None, [csv]).name == "My-Penguins-2024-mlp"
    assert load_config(None, ["data.source.name=iris", "model.kind=logistic"]).name == "iris-logistic"
    assert load_config(None, [csv, "name=mine"]).name == "mine"  # a name given is kept
    long = load_config(None, [f"data.source={{kind: npz, path: /d/{'x' * 80}.npz}}", "model.kind=cnn"]).name
    assert long == "x" * 60 + "-cnn" and len(long) == 64  # the longest name the field takes


def test_the_table_preset_is_the_default_run_plus_the_table():
    from schemas.loading import config_diff

    config = load_config(ROOT / "configs" / "csv_example.yaml")
    changed = {key for key, _, _ in config_diff(RunConfig(), config)}
    assert changed and all(key == "name" or key.startswith("data.source.") for key in changed), changed
    assert config.data.source.path == ROOT / "configs" / "my_table.csv"


# --------------------------------------------------------------------------- paths that travel


def _preset(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.yaml").write_text(text)
    return folder / "run.yaml"


def test_relative_paths_in_a_config_resolve_against_its_folder_from_anywhere(tmp_path: Path, monkeypatch):
    preset = _preset(tmp_path / "project", "data: {source: {kind: csv, path: data/t.csv, target: y}}\n"
                                           "model: {kind: mlp, init_from: ../old/model}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("project/run.yaml"))
    assert config.data.source.path == tmp_path / "project" / "data" / "t.csv"
    assert config.model.init_from == str(tmp_path / "old" / "model")
    # The saved YAML holds absolute paths: it repeats the run from any folder.
    again = tmp_path / "elsewhere" / "config.yaml"
    again.parent.mkdir()
    again.write_text(config_to_yaml(config))
    monkeypatch.chdir(again.parent)
    assert load_config(again) == config
    # --set paths are the command line's: relative to the working directory.
    moved = load_config(preset, ["data.source.path=mine.csv", "device.cache_dir=~/c"])
    assert moved.data.source.path == tmp_path / "elsewhere" / "mine.csv"
    assert moved.device.cache_dir == str(Path("~/c").expanduser())


def test_a_sweeps_paths_follow_the_same_rule(tmp_path: Path, monkeypatch):
    from schemas.sweep import load_sweep_config

    _preset(tmp_path / "presets", "data: {source: {kind: csv, path: t.csv, target: y}}\n")
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "a.yaml").write_text("base: ../presets/run.yaml\nspace: {optimizer.lr: [0.1, 0.01]}\n")
    (sweeps / "b.yaml").write_text("base: {data: {source: {kind: csv, path: t.csv, target: y}}}\n"
                                   "space: {optimizer.lr: [0.1, 0.01]}\n")
    monkeypatch.chdir(tmp_path / "presets")
    assert load_sweep_config(sweeps / "a.yaml").base.data.source.path == tmp_path / "presets" / "t.csv"
    assert load_sweep_config(sweeps / "b.yaml").base.data.source.path == sweeps / "t.csv"
    overridden = load_sweep_config(sweeps / "b.yaml", ["base.data.source.path=u.csv"])
    assert overridden.base.data.source.path == tmp_path / "presets" / "u.csv"


def test_a_missing_file_is_named_by_the_full_path_tried(tmp_path: Path, monkeypatch):
    from schemas import DataError
    from tasks.data import prepare_data

    preset = _preset(tmp_path / "project", "data: {source: {kind: csv, path: t.csv, target: y}}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"data file not found: {tmp_path / 'project' / 't.csv'}$"):
        prepare_data(load_config(preset).data, 0)
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'nope.yaml'}$"):
        load_config("nope.yaml")
