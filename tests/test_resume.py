"""Checkpoints and resume: an interrupted run ends bit for bit as an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tasks.train._epochs
from schemas import ConfigError, load_config
from tasks.run.rundir import read_run_state
from tasks.train import TimeLimitReached, train_model
from tasks.train._checkpoint import load_checkpoint
from tests.conftest import ROOT, prepared, tiny_overrides

CPU = torch.device("cpu")


def _config(**extra: str):
    sets = {"train.epochs": "8", "train.early_stopping.enabled": "false", "model.dropout": "0.2"}
    sets.update(extra)
    return load_config(None, tiny_overrides(**sets))


def _fresh(config):
    return prepared(config, CPU)


def _state(parts):
    return {k: v.clone() for k, v in parts.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fail_validation(monkeypatch, at_call: int, error: BaseException) -> None:
    """Make the `at_call`-th validation pass raise `error` (the end of an epoch, where a run fails)."""
    real_validate = tasks.train._epochs.validate
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise error
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(tasks.train._epochs, "validate", failing)


def _uninterrupted(config, tmp_path: Path):
    data, parts = _fresh(config)
    result = train_model(parts, data, config.train, CPU, config.seed, tmp_path / "reference")
    return result, _state(parts), parts.optimizer.state_dict()


@pytest.mark.parametrize("scheduler", ["none", "plateau"])
def test_failure_at_an_epoch_then_resume_is_bit_for_bit(tmp_path, monkeypatch, scheduler):
    extra = {} if scheduler == "none" else {"scheduler.name": "plateau", "scheduler.patience": "1"}
    config = _config(**extra)
    reference, ref_weights, ref_opt = _uninterrupted(config, tmp_path)

    _fail_validation(monkeypatch, 3, OSError("disk went away"))
    data, parts = _fresh(config)
    ckpt = tmp_path / "interrupted"
    with pytest.raises(OSError):
        train_model(parts, data, config.train, CPU, config.seed, ckpt)
    assert load_checkpoint(ckpt, config.seed, data.spec.data_hash)["epoch"] == 2
    # The retry gets the same (now half-trained) objects, as Prefect passes them.
    resumed = train_model(parts, data, config.train, CPU, config.seed, ckpt)
    assert resumed.resumed_from_epoch == 2
    assert _same(_state(parts), ref_weights)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in reference.history]
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in reference.history]
    assert resumed.best_epoch == reference.best_epoch and resumed.best_score == reference.best_score
    assert (ckpt / "best.pt").is_file() and (ckpt / "last.pt").is_file()


def test_failure_mid_epoch_resumes_from_the_batch(tmp_path):
    config = _config(**{"train.checkpoint.every_n_batches": "2"})
    reference, ref_weights, _ = _uninterrupted(config, tmp_path)

    data, parts = _fresh(config)
    real_loss = parts.loss_fn
    calls = []

    def flaky_loss(out, y):
        calls.append(1)
        if len(calls) == 3 * 8 + 5:  # epoch 4, batch 5 (7 batches and 1 validation call per epoch)
            raise ConnectionError("lost the data share")
        return real_loss(out, y)

    parts.loss_fn = flaky_loss
    ckpt = tmp_path / "interrupted"
    with pytest.raises(ConnectionError):
        train_model(parts, data, config.train, CPU, config.seed, ckpt)
    saved = load_checkpoint(ckpt, config.seed, data.spec.data_hash)
    assert (saved["epoch"], saved["batch"]) == (3, 4)
    resumed = train_model(parts, data, config.train, CPU, config.seed, ckpt)
    assert _same(_state(parts), ref_weights)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in reference.history]


def test_time_limit_leaves_a_resumable_checkpoint(tmp_path):
    config = _config(**{"train.time_limit_seconds": "1e-9"})
    data, parts = _fresh(config)
    ckpt = tmp_path / "run" / "checkpoints"
    with pytest.raises(TimeLimitReached, match=f"resume it with: python -m flows.train --resume {tmp_path / 'run'}"):
        train_model(parts, data, config.train, CPU, config.seed, ckpt)
    assert load_checkpoint(ckpt, config.seed, data.spec.data_hash)["batch"] == 1
    reference, ref_weights, _ = _uninterrupted(_config(), tmp_path)
    unlimited = config.train.model_copy(update={"time_limit_seconds": None})
    train_model(parts, data, unlimited, CPU, config.seed, ckpt)
    assert _same(_state(parts), ref_weights)


def test_a_checkpoint_of_another_seed_is_refused(tmp_path):
    config = _config()
    data, parts = _fresh(config)
    train_model(parts, data, config.train, CPU, config.seed, tmp_path)
    with pytest.raises(ConfigError, match="checkpoint was made with seed=0, this run has seed=5"):
        train_model(parts, data, config.train, CPU, 5, tmp_path)


def test_checkpoints_load_without_pickle(tmp_path):
    config = _config()
    data, parts = _fresh(config)
    train_model(parts, data, config.train, CPU, config.seed, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # raises on any pickled object
    assert state["epoch"] == 8 and state["finished"] is True


@pytest.mark.slow
def test_prefect_retry_resumes_inside_the_flow(prefect_api, tmp_path, monkeypatch):
    from flows.train import train_flow

    config = _config(**{"train.retry.retries": "1", "train.retry.delay_seconds": "0"})
    train_flow(config=config, run_dir=str(tmp_path / "clean"))

    _fail_validation(monkeypatch, 4, ConnectionResetError("transient"))
    summary = train_flow(config=config, run_dir=str(tmp_path / "retried"))
    assert summary.epochs_run == 8
    clean = (tmp_path / "clean" / "model" / "weights.safetensors").read_bytes()
    retried = (tmp_path / "retried" / "model" / "weights.safetensors").read_bytes()
    assert clean == retried
    a = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    b = json.loads((tmp_path / "retried" / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["confusion_matrix"] == b["confusion_matrix"]


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(run_cli, prefect_api, tmp_path, capsys):
    sets = {
        "name": "kill-test",
        "data.source.name": "digits",
        "model.hidden_sizes": "[64]",
        "train.epochs": "40",
        "train.batch_size": "32",
        "train.early_stopping.enabled": "false",
        "train.checkpoint.every_n_batches": "5",
        "train.progress": "true",
        "device": "cpu",
        "device.threads": "1",
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = prefect_api
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.train", *args, "--run-dir", "killed"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stderr.readline()
        if line.startswith("epoch ") and int(line.split()[1].split("/")[0]) >= 3:
            time.sleep(0.05)  # land somewhere inside a later epoch
            break
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.is_file()
    assert read_run_state(tmp_path / "killed")["state"] == "running"
    assert not (tmp_path / "killed" / "model").exists()

    resumed = run_cli("flows.train", "--resume", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from epoch" in resumed.stderr
    assert read_run_state(tmp_path / "killed")["state"] == "completed"

    from flows.train import train_flow

    train_flow(config=load_config(tmp_path / "killed" / "config.yaml"), run_dir=str(tmp_path / "clean"))
    clean = (tmp_path / "clean" / "model" / "weights.safetensors").read_bytes()
    assert (tmp_path / "killed" / "model" / "weights.safetensors").read_bytes() == clean

    from flows.train import main

    assert main(["--resume", str(tmp_path / "killed")]) == 2
    assert "the run already completed" in capsys.readouterr().err


def test_resume_refuses_a_different_config_unless_forced(tmp_path):
    from schemas.loading import config_to_yaml, resume_config

    run = tmp_path / "run"
    run.mkdir()
    config = _config()
    (run / "config.yaml").write_text(config_to_yaml(config))
    assert resume_config(run, None, []) == config
    assert resume_config(run, None, ["train.progress=true", "train.time_limit_seconds=60"]).train.progress
    with pytest.raises(ConfigError, match=r"differs from the run's in optimizer.lr: 0.01 -> 0.02; train.epochs: 8 -> 9"):
        resume_config(run, None, ["train.epochs=9", "optimizer.lr=0.02"])
    assert resume_config(run, None, ["train.epochs=9"], force=True).train.epochs == 9


def test_resume_accepts_a_new_image_cache_dir(tmp_path):
    from schemas.loading import config_to_yaml, load_config, resume_config

    run = tmp_path / "run"
    run.mkdir()
    source = f"data.source={{kind: image_folder, path: {tmp_path}, cache_dir: {tmp_path / 'a'}}}"
    config = load_config(None, [source, "model.kind=tinyvgg"])
    (run / "config.yaml").write_text(config_to_yaml(config))
    resumed = resume_config(run, None, [f"data.source.cache_dir={tmp_path / 'b'}"])  # where decoded images are cached
    assert resumed.data.source.cache_dir == tmp_path / "b"
    with pytest.raises(ConfigError, match=r"differs from the run's in data.source.size"):
        resume_config(run, None, ["data.source.size=[16, 16]"])  # what the model sees: refused


def test_resume_refuses_turning_checkpoints_off(tmp_path):
    from schemas.loading import config_to_yaml, resume_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(_config()))
    with pytest.raises(ConfigError, match="train.checkpoint.enabled: True -> False"):
        resume_config(run, None, ["train.checkpoint.enabled=false"])
    assert resume_config(run, None, ["train.checkpoint.every_n_batches=3"]).train.checkpoint.every_n_batches == 3


def test_a_checkpoint_that_is_not_a_mapping_is_a_clear_error(tmp_path):
    torch.save([1, 2], tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="checkpoint format None is not supported"):
        load_checkpoint(tmp_path, 0, "x")


@pytest.mark.slow
def test_resume_after_the_bundle_was_written_but_the_run_not_marked(prefect_api, tmp_path):
    from flows.train import train_flow
    from tasks.run.rundir import mark_running

    config = _config()
    train_flow(config=config, run_dir=str(tmp_path / "run"))
    reference = (tmp_path / "run" / "model" / "weights.safetensors").read_bytes()
    mark_running(tmp_path / "run", {"pid": 2**22 + 7})  # as if killed after saving, before completing
    summary = train_flow(config=config, run_dir=str(tmp_path / "run"), resume=True)
    assert summary.epochs_run == 8
    assert (tmp_path / "run" / "model" / "weights.safetensors").read_bytes() == reference
    assert read_run_state(tmp_path / "run")["state"] == "completed"


def _oom_on_call(parts, call: int):
    real_forward = parts.model.forward
    calls = []

    def forward(x):
        calls.append(1)
        if len(calls) == call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(x)

    parts.model.forward = forward


def test_out_of_memory_retries_with_half_the_batch(tmp_path):
    from tasks.common.retry import RetryWithSmallerBatch, is_transient_error

    config = _config(**{"train.oom_smaller_batch": "true"})
    data, parts = _fresh(config)
    _oom_on_call(parts, 3 * 8 + 2)  # inside epoch 4 (7 batches and 1 validation pass per epoch)
    with pytest.raises(RetryWithSmallerBatch, match="continues from epoch 3 with batch size 8") as info:
        train_model(parts, data, config.train, CPU, config.seed, tmp_path)
    assert is_transient_error(info.value)
    result = train_model(parts, data, config.train, CPU, config.seed, tmp_path)
    assert result.resumed_from_epoch == 3 and result.epochs_run == 8
    assert json.loads((tmp_path / "batch_size.json").read_text()) == {"batch_size": 8}


def test_out_of_memory_without_the_option_is_a_clear_error(tmp_path):
    from schemas import TrainingError
    from tasks.common.retry import is_transient_error

    config = _config()
    data, parts = _fresh(config)
    _oom_on_call(parts, 5)
    with pytest.raises(TrainingError, match="out of memory with train.batch_size=16: lower it, or set train.oom_smaller_batch") as info:
        train_model(parts, data, config.train, CPU, config.seed, tmp_path)
    assert not is_transient_error(info.value)


def test_oom_option_needs_epoch_boundary_checkpoints():
    with pytest.raises(ConfigError, match="leave train.checkpoint.every_n_batches unset"):
        load_config(None, ["train.oom_smaller_batch=true", "train.checkpoint.every_n_batches=5"])


def test_a_checkpoint_of_an_unfused_optimizer_resumes_into_the_fused_one(tmp_path, monkeypatch):
    """A checkpoint written by another optimizer implementation (MPS, an older torch or version) resumes."""
    config = _config()
    data, parts = _fresh(config)
    ckpt = tmp_path / "ckpt"
    parts.optimizer = torch.optim.Adam(parts.model.parameters(), lr=config.optimizer.lr, foreach=False)
    _fail_validation(monkeypatch, 3, OSError("disk went away"))
    with pytest.raises(OSError):
        train_model(parts, data, config.train, CPU, config.seed, ckpt)
    assert torch.load(ckpt / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["fused"] is None

    _, fused = _fresh(config)  # the library's optimizer: fused
    resumed = train_model(fused, data, config.train, CPU, config.seed, ckpt)
    assert resumed.resumed_from_epoch == 2 and len(resumed.history) == config.train.epochs
    group = fused.optimizer.param_groups[0]
    assert group["fused"] is True and group["foreach"] is None  # this optimizer's implementation, kept
    first = group["params"][0]
    assert fused.optimizer.state[first]["step"].device == first.device
    assert all(math.isfinite(r.train_loss) for r in resumed.history)


def test_resume_takes_a_relative_path_in_config_yaml_against_the_working_directory(tmp_path, monkeypatch, capsys):
    """config.yaml is written with absolute paths; one with relative paths (as written when paths were taken
    relative to the working directory) resumes as it started, from the project folder, not the run folder."""
    from flows.train import main
    from schemas.loading import resume_config

    project = tmp_path / "project"
    run = project / "runs" / "old"
    run.mkdir(parents=True)
    (project / "t.csv").write_text("a,y\n1,2\n")
    (run / "config.yaml").write_text("data: {source: {kind: csv, path: t.csv, target: y}}\n"
                                     "model: {kind: mlp, init_from: runs/first/model}\n")
    monkeypatch.chdir(project)
    config = resume_config(Path("runs/old"), None, [])
    assert config.data.source.path == project / "t.csv"  # not runs/old/t.csv
    assert config.model.init_from == str(project / "runs" / "first" / "model")
    assert main(["--resume", "runs/old", "--print-config"]) == 0
    assert f"path: {project / 't.csv'}" in capsys.readouterr().out
