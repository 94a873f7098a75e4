"""Data-parallel training (train.distributed): 2 ranks on gloo, on the CPU, through torch's elastic launcher.

Each 2-rank run spawns two processes that import torch and the pipeline, which costs seconds; the tests
that launch are marked slow and share runs where they can.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from schemas import ConfigError
from schemas.errors import TrainingError
from tasks.common.callbacks import LambdaCallback, Stop
from tasks.common.retry import RankFailed, is_transient_error
from tasks.train import train_model
from tasks.train._checkpoint import load_checkpoint
from tasks.train._shard import Shard
from tests.conftest import ROOT, tiny_overrides
from tests.rank_helpers import CPU, FailOnRank, config, fresh, train

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SCORES = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")


def _scores(history):
    return [{k: getattr(r, k) for k in SCORES} for r in history]


def _weights(parts):
    return {k: v.clone() for k, v in parts.model.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- fast: shards and config


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_parts_make_up_each_global_batch(world):
    order = torch.randperm(105, generator=torch.Generator().manual_seed(0))
    parts = [Shard(rank, world).local_order(order, 25) for rank in range(world)]
    for batch in range(5):  # 4 batches of 25, then 5 rows
        rows = torch.cat([local[offsets[batch]:offsets[batch + 1]] for local, offsets in parts])
        assert torch.equal(rows, order[batch * 25 : (batch + 1) * 25])
    sizes = [offsets[5] - offsets[4] for _, offsets in parts]
    assert sum(sizes) == 5 and max(sizes) - min(sizes) <= 1


def test_a_rank_with_no_rows_of_a_batch_still_steps_with_zero_loss():
    shard = Shard(1, 2)
    model = torch.nn.Linear(3, 2)
    loss = shard.loss_fn(torch.nn.functional.cross_entropy, 0, 1)(model(torch.zeros(0, 3)), torch.zeros(0).long())
    loss.backward()
    assert float(loss.detach()) == 0.0 and model.weight.grad is not None


@pytest.mark.parametrize(
    "sets, words",
    [
        ({"train.distributed.nnodes": "2"}, "rdzv_endpoint=HOST:PORT"),
        ({"train.distributed.nnodes": "2", "train.distributed.node_rank": "2",
          "train.distributed.rdzv_endpoint": "10.0.0.1:29500"}, "node_rank=2 must be below nnodes=2"),
        ({"train.distributed.nproc_per_node": "0"}, "nproc_per_node=0"),
        ({"train.distributed.rdzv_endpoint": "10.0.0.1"}, "not HOST:PORT"),
    ],
)
def test_config_errors_name_the_key(sets, words):
    from schemas.loading import load_config

    with pytest.raises(ConfigError, match=words):
        load_config(None, tiny_overrides(**sets))


def test_a_global_batch_smaller_than_the_ranks_is_refused_before_launching():
    cfg = config(**{"train.batch_size": "1"})
    data, parts = fresh(cfg)
    with pytest.raises(ConfigError, match="train.batch_size=1 is the global batch"):
        train_model(parts, data, cfg.train, CPU, cfg.seed)


def test_the_ranks_do_not_run_the_command_module_again(monkeypatch):
    """Under `python -m flows.train`, spawn would import the flow module (and Prefect) again in every rank."""
    import importlib.machinery
    import multiprocessing.spawn
    import types

    from tasks.common.processes import workers_skip_the_command_module

    def preparation() -> dict:
        data = multiprocessing.spawn.get_preparation_data("rank")
        return {k: v for k, v in data.items() if k.startswith("init_main")}

    command = types.ModuleType("__main__")
    command.__spec__ = importlib.machinery.ModuleSpec("flows.train", None)
    monkeypatch.setitem(sys.modules, "__main__", command)
    assert preparation() == {"init_main_from_name": "flows.train"}
    with workers_skip_the_command_module():
        assert preparation() == {}
    assert sys.modules["__main__"] is command
    script = types.ModuleType("__main__")  # a user's script: it may define what the ranks unpickle
    script.__spec__ = importlib.machinery.ModuleSpec("my_training", None)
    monkeypatch.setitem(sys.modules, "__main__", script)
    with workers_skip_the_command_module():
        assert preparation() == {"init_main_from_name": "my_training"}


def test_one_process_is_the_plain_loop():
    result, _ = train(config(**{"train.distributed.nproc_per_node": "1"}))
    assert result.ranks == 1


def test_a_failed_rank_is_retried():
    assert is_transient_error(RankFailed("rank 1 of 2 was killed by SIGKILL"))


def test_several_gpus_are_counted_and_auto_proposes_one_rank_each():
    from schemas.device import DeviceConfig
    from schemas.distributed import DistributedConfig
    from tasks.device._decide import decide_device
    from tasks.train._distributed import processes_per_node

    info = decide_device(DeviceConfig(name="cuda"), None, ("cpu", "cuda:0", "cuda:1", "cuda:2"), threads=2)
    assert info.device == "cuda:0" and info.gpus == 3
    assert "train.distributed.nproc_per_node=auto trains on all 3" in info.proposal()
    assert processes_per_node(DistributedConfig(nproc_per_node="auto"), info) == 3
    cpu = decide_device(DeviceConfig(name="cpu"), None, ("cpu",), threads=2)
    assert cpu.proposal() is None
    assert processes_per_node(DistributedConfig(nproc_per_node="auto"), cpu) == max(1, min(4, (os.cpu_count() or 1) // 2))


SWEEP_BASE = {
    "data": {"source": {"kind": "builtin", "name": "iris"}},
    "train": {"epochs": 2, "distributed": {"nproc_per_node": 2}},
    "device": "cpu",
}


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"parallelism": 2}, "executor 'local' with parallelism=2 cannot give it"),
        ({"executor": "dask"}, "executor 'dask' with parallelism=1 cannot give it"),
        ({"space": {"train.distributed.nproc_per_node": [1, 2]}}, "space.train.distributed.nproc_per_node: cannot"),
    ],
)
def test_a_sweep_refuses_distributed_trials_it_cannot_give_processes(settings, words):
    from schemas.sweep import validate_sweep

    data = {"base": SWEEP_BASE, "space": {"optimizer.lr": [0.01, 0.1]}, "n_trials": 2, "trials_per_round": 2}
    with pytest.raises(ConfigError, match=words):
        validate_sweep({**data, **settings})
    assert validate_sweep(data).base.train.distributed.nproc_per_node == 2  # one trial at a time, here: allowed


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_train_on_nccl():  # pragma: no cover - no GPU on the machines this was written on
    cfg = config(**{"device": "cuda", "train.distributed.nproc_per_node": "auto"})
    data, parts = fresh(cfg)
    result = train_model(parts, data, cfg.train, torch.device("cuda"), cfg.seed)
    assert result.ranks == torch.cuda.device_count()


# --------------------------------------------------------------------------- 2 ranks


@pytest.mark.slow
def test_two_ranks_match_one_process_on_a_deterministic_model():
    one, one_parts = train(config(**{"train.distributed.nproc_per_node": "1"}))
    seen = []
    two, two_parts = train(config(), callbacks=[LambdaCallback(on_epoch_end=seen.append)])
    assert two.ranks == 2 and [r.epoch for r in seen] == [1, 2, 3, 4]  # the callbacks ran here, in the parent
    for a, b in zip(one.history, two.history, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-5)
        assert b.val_accuracy == a.val_accuracy
    for key, value in _weights(one_parts).items():
        torch.testing.assert_close(two_parts.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_stop_asked_for_in_the_parent_ends_every_rank_after_that_epoch():
    seen = []

    def stop_at_two(record):
        seen.append(record.epoch)
        return Stop("enough", prune=True) if record.epoch == 2 else None

    result, _ = train(config(), callbacks=[LambdaCallback(on_epoch_end=stop_at_two)])
    assert result.ranks == 2 and seen == [1, 2] and [r.epoch for r in result.history] == [1, 2]
    assert result.stop_reason == "enough" and result.pruned and result.stopped_early


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A 2-rank run (dropout 0.2) whose parent was killed with SIGKILL at epoch 3, before its checkpoint."""
    run_dir = tmp_path_factory.mktemp("killed") / "checkpoints"
    run_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tests.rank_helpers", str(run_dir), "3"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    time.sleep(1.0)
    mtime = (run_dir / "last.pt").stat().st_mtime_ns
    time.sleep(1.5)
    assert (run_dir / "last.pt").stat().st_mtime_ns == mtime, "a worker outlived its parent and wrote on"
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted():
    return train(config(**{"model.dropout": "0.2"}), None)


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_bit_for_bit(killed_run, uninterrupted, tmp_path):
    saved = load_checkpoint(killed_run, seed=0, data_hash=fresh(config())[0].spec.data_hash)
    assert saved["epoch"] == 2 and saved["world_size"] == 2 and len(saved["rank_rng"]) == 2
    directory = shutil.copytree(killed_run, tmp_path / "checkpoints")
    resumed, parts = train(config(**{"model.dropout": "0.2"}), directory)
    expected, expected_parts = uninterrupted
    assert resumed.resumed_from_epoch == 2 and resumed.ranks == 2
    assert _scores(resumed.history) == _scores(expected.history)
    assert all(torch.equal(v, _weights(expected_parts)[k]) for k, v in _weights(parts).items())


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_with_one_rank(killed_run, uninterrupted, tmp_path):
    directory = shutil.copytree(killed_run, tmp_path / "checkpoints")
    cfg = config(**{"model.dropout": "0.2", "train.distributed.nproc_per_node": "1"})
    resumed, _ = train(cfg, directory)
    expected, _ = uninterrupted
    assert resumed.resumed_from_epoch == 2 and resumed.ranks == 1 and resumed.epochs_run == 4
    assert _scores(resumed.history)[:2] == _scores(expected.history)[:2]  # from the checkpoint
    # Other dropout masks from epoch 3 on: within noise, not equal.
    assert abs(resumed.history[-1].val_loss - expected.history[-1].val_loss) < 0.2


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_attempt_with_its_error(tmp_path, capfd):
    cfg = config()
    data, parts = fresh(cfg)
    parts.model = FailOnRank(parts.model, rank=1, after=3)
    started = time.perf_counter()
    with pytest.raises(RankFailed, match=r"rank 1 of 2 failed: ValueError: injected failure in step 3"):
        train_model(parts, data, cfg.train, CPU, cfg.seed, tmp_path / "checkpoints")
    assert time.perf_counter() - started < 120
    assert "Traceback" not in capfd.readouterr().err
    assert (tmp_path / "checkpoints" / "last.pt").is_file()  # rank 0 wrote the first checkpoint: a retry resumes


@pytest.mark.slow
def test_an_endpoint_nobody_answers_fails_within_the_timeout():
    cfg = config(**{
        "train.distributed.nnodes": "2",
        "train.distributed.node_rank": "1",
        "train.distributed.rdzv_endpoint": f"127.0.0.1:{_free_port()}",
        "train.distributed.timeout_seconds": "3",
    })
    data, parts = fresh(cfg)
    started = time.perf_counter()
    with pytest.raises(TrainingError, match=r"no node 0 answered at train.distributed.rdzv_endpoint=127\.0\.0\.1"):
        train_model(parts, data, cfg.train, CPU, cfg.seed)
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_the_command_trains_on_two_ranks_and_writes_one_run(tmp_path):
    run_dir = tmp_path / "run"
    sets = tiny_overrides(**{"train.distributed.nproc_per_node": "2", "train.epochs": "3"})
    done = subprocess.run(
        [sys.executable, "-m", "flows.train", "--run-dir", str(run_dir), *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env={**ENV, "PREFECT_HOME": str(tmp_path / "prefect")}, capture_output=True, text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epochs in" in done.stdout and "on 2 ranks" in done.stdout
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 1 + 3
    assert (run_dir / "model" / "manifest.json").is_file() or any((run_dir / "model").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "prefect") == ["run"]


def test_resume_may_change_the_number_of_ranks_without_force():
    from schemas.keys import resume_safe
    from schemas.loading import RESUME_SAFE

    assert resume_safe("train.distributed.nproc_per_node", RESUME_SAFE)
    assert not resume_safe("train.batch_size", RESUME_SAFE)


@pytest.mark.parametrize("source", ["device", "host", "batches"])
@pytest.mark.parametrize("batch_size", [25, 52])  # 52: the last batch has 1 row, and rank 1 none of it
def test_every_batch_source_gives_each_rank_its_part_of_each_batch(source, batch_size):
    import dataclasses

    from tasks.train._batches import DeviceBatches, HostBatches, StreamedBatches

    data, _ = fresh(config())

    def stream(order, epoch, start_batch, size):
        for start in range(start_batch * size, len(order), size):
            rows = order[start : start + size]
            yield data.X_train[rows], data.y_train[rows]

    kind = {"device": DeviceBatches, "host": HostBatches, "batches": StreamedBatches}[source]
    if source == "batches":
        data = dataclasses.replace(data, train_batches=stream)
    order = torch.randperm(len(data.X_train), generator=torch.Generator().manual_seed(1))
    whole = list(kind(data, CPU).epoch(order, 1, 1, batch_size))
    ranks = [list(kind(data, CPU, Shard(rank, 2)).epoch(order, 1, 1, batch_size)) for rank in range(2)]
    assert [len(r) for r in ranks] == [len(whole)] * 2  # every rank takes every step, from batch 1 on
    for i, (batch, xb, yb) in enumerate(whole):
        assert [r[i][0] for r in ranks] == [batch, batch]
        assert torch.equal(torch.cat([r[i][1] for r in ranks]), xb)
        assert torch.equal(torch.cat([r[i][2] for r in ranks]), yb)
