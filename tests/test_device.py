"""Device selection: measuring for auto, the decision rule, its cache, strict explicit devices, threads."""

from __future__ import annotations

import json

import pytest
import torch

from schemas import ConfigError, DataError, DeviceConfig, load_config
from schemas.recipe import ModelSetup
from schemas.device import Candidate, DeviceInfo, InputShape
from tasks.device._decide import choose_threads, thread_counts
from tasks.data import peek_shape, prepare_data, probe_workload
from tasks.device import (
    available_cores,
    available_devices,
    choose,
    decide_device,
    decide_threads,
    probe_device,
    resolve_threads,
    select_device,
    threads_per_worker,
)
from tasks.model import build_model
from tasks.train import train_model
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


def _c(device: str, ms: float | None) -> Candidate:
    return Candidate(device=device, ms_per_step=ms, steps=5, probe_seconds=0.01, error=None if ms else "probe failed: x")


class FakeProbe:
    """Injected timings: ms per step for each device; counts calls."""

    def __init__(self, timings: dict[str, float | None]) -> None:
        self.timings = timings
        self.calls: list[str] = []

    def __call__(self, device, workload, shape, config, budget):
        self.calls.append(device)
        return _c(device, self.timings[device])


def _workload(*overrides: str):
    return probe_workload(load_config(None, tiny_overrides(**dict(o.split("=", 1) for o in overrides))))


def _auto(tmp_path, **fields) -> DeviceConfig:
    return DeviceConfig(name="auto", cache_dir=str(tmp_path / "cache"), **fields)


def test_cpu_is_always_available():
    assert available_devices()[0] == "cpu"


def test_the_fastest_device_wins():
    assert choose([_c("cpu", 10.0), _c("cuda:0", 2.0), _c("cuda:1", 1.0)], 0.1)[0] == "cuda:1"
    device, reason = choose([_c("cpu", 1.0), _c("cuda:0", 4.0)], 0.1)
    assert device == "cpu" and reason.startswith("auto: cpu fastest (1 ms/step vs cuda:0 4)")
    device, reason = choose([_c("cpu", 4.0), _c("mps", 1.0)], 0.1)
    assert device == "mps" and "4.00x faster than cpu" in reason


def test_a_near_tie_goes_to_the_cpu_within_the_margin():
    device, reason = choose([_c("cpu", 10.0), _c("cuda:0", 9.5)], 0.10)
    assert device == "cpu" and "only 5% faster than cpu" in reason and "within the 10% margin" in reason
    assert choose([_c("cpu", 10.0), _c("cuda:0", 8.9)], 0.10)[0] == "cuda:0"
    assert choose([_c("cpu", 10.0), _c("cuda:0", 8.9)], 0.20)[0] == "cpu"
    assert choose([_c("cpu", 10.0), _c("cuda:0", 9.99)], 0.0)[0] == "cuda:0"


def test_a_failed_probe_never_wins():
    assert choose([_c("cpu", 10.0), _c("cuda:0", None)], 0.1)[0] == "cpu"
    assert choose([_c("cpu", None), _c("cuda:0", 3.0)], 0.1)[0] == "cuda:0"


def test_auto_measures_every_candidate_then_reuses_the_cached_decision(tmp_path):
    probe = FakeProbe({"cpu": 5.0, "cuda:0": 1.0, "cuda:1": 2.0})
    available = ("cpu", "cuda:0", "cuda:1")
    first = decide_device(_auto(tmp_path), _workload(), available, 2, probe)
    assert probe.calls == ["cpu", "cuda:0", "cuda:1"]
    assert first.device == "cuda:0" and not first.from_cache
    assert [row["ms_per_step"] for row in first.table()] == [5.0, 1.0, 2.0]
    assert [row["chosen"] for row in first.table()] == [False, True, False]
    cached = json.loads(open(first.cache_file).read())
    assert [c["device"] for c in cached["candidates"]] == list(available)

    probe.timings = {"cpu": 1.0, "cuda:0": 9.0, "cuda:1": 9.0}  # would change the answer if measured
    again = decide_device(_auto(tmp_path), _workload(), available, 2, probe)
    assert probe.calls == ["cpu", "cuda:0", "cuda:1"]  # no new probe
    assert again.device == "cuda:0" and again.from_cache and again.probe_seconds == 0
    assert "cached decision, not re-measured" in again.reason

    fresh = decide_device(_auto(tmp_path, remeasure=True), _workload(), available, 2, probe)
    assert len(probe.calls) == 6 and fresh.device == "cpu" and not fresh.from_cache


@pytest.mark.parametrize(
    "change",
    [
        {"overrides": ("train.batch_size=32",)},
        {"overrides": ("model.hidden_sizes=[64]",)},
        {"overrides": ("data.source.name=wine",)},  # another input shape
        {"threads": 1},
        {"fields": {"precision": "bf16"}},
    ],
)
def test_the_cache_key_covers_what_changes_the_timing(tmp_path, change):
    probe = FakeProbe({"cpu": 5.0, "cuda:0": 1.0})
    decide_device(_auto(tmp_path), _workload(), ("cpu", "cuda:0"), 2, probe)
    decide_device(_auto(tmp_path), _workload(), ("cpu", "cuda:0"), 2, probe)
    assert len(probe.calls) == 2  # same key: cached
    decide_device(
        _auto(tmp_path, **change.get("fields", {})), _workload(*change.get("overrides", ())),
        ("cpu", "cuda:0"), change.get("threads", 2), probe,
    )
    assert len(probe.calls) == 4  # new key: measured again
    # ... and other hardware is another key too
    decide_device(_auto(tmp_path), _workload(), ("cpu", "mps"), 2, FakeProbe({"cpu": 1.0, "mps": 1.0}))


def test_a_damaged_cache_entry_means_measuring_again(tmp_path):
    probe = FakeProbe({"cpu": 5.0, "cuda:0": 1.0})
    info = decide_device(_auto(tmp_path), _workload(), ("cpu", "cuda:0"), 2, probe)
    open(info.cache_file, "w").write("{not json")
    assert not decide_device(_auto(tmp_path), _workload(), ("cpu", "cuda:0"), 2, probe).from_cache
    assert len(probe.calls) == 4


def test_only_the_cpu_means_nothing_to_measure(tmp_path):
    probe = FakeProbe({})
    info = decide_device(_auto(tmp_path), _workload(), ("cpu",), 2, probe)
    assert info.device == "cpu" and probe.calls == [] and info.candidates == ()
    assert info.reason == "auto: cpu is the only device; nothing to measure"


def test_fp16_is_not_a_cpu_option(tmp_path):
    with pytest.raises(ConfigError, match=r"device.precision = 'fp16' needs a cuda or mps device; on the CPU use bf16"):
        decide_device(DeviceConfig(name="cpu", precision="fp16"), None, ("cpu",), 2)
    probe = FakeProbe({"cuda:0": 3.0})
    info = decide_device(_auto(tmp_path, precision="fp16"), _workload(), ("cpu", "cuda:0"), 2, probe)
    assert probe.calls == ["cuda:0"] and info.device == "cuda:0"


def test_a_missing_explicit_device_is_an_error_that_lists_what_is_there():
    config = DeviceConfig(name="cuda")
    with pytest.raises(ConfigError, match=r"device.name = 'cuda': not available on this machine; available: cpu$"):
        decide_device(config, None, ("cpu",), 2)
    with pytest.raises(ConfigError, match="available: cpu, cuda:0"):
        decide_device(DeviceConfig(name="cuda:1"), None, ("cpu", "cuda:0"), 2)
    info = decide_device(config, None, ("cpu", "cuda:0"), 2, FakeProbe({}))
    assert (info.device, info.reason, info.candidates) == ("cuda:0", "requested explicitly", ())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_requesting_cuda_without_it_fails_through_the_task():
    with pytest.raises(ConfigError, match="not available on this machine; available: cpu"):
        select_device(DeviceConfig(name="cuda"))


def test_the_cpu_probe_times_real_training_steps_within_its_budget():
    workload = _workload("model.hidden_sizes=[256, 256]", "train.batch_size=128")
    shape = InputShape((4,), 3, "classification")
    rng = torch.get_rng_state()
    quick = probe_device("cpu", workload, shape, DeviceConfig(probe_steps=5), 5.0)
    assert quick.ms_per_step > 0 and quick.steps == 5 and quick.error is None
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    capped = probe_device("cpu", workload, shape, DeviceConfig(probe_steps=1000), 0.2)
    assert 1 <= capped.steps < 1000 and capped.probe_seconds < 1.5


@pytest.mark.parametrize("overrides", [(), ("model.kind=cnn", "model.channels=[4, 8]"), ("data.source.name=diabetes",)])
def test_the_probe_runs_the_presets_models(overrides):
    config = load_config(None, ["device=auto", *overrides])
    shape = peek_shape(config.data)
    result = probe_device("cpu", probe_workload(config), shape, config.device, 2.0)
    assert result.error is None and result.ms_per_step > 0


def test_a_probe_that_cannot_run_is_recorded_not_raised():
    result = probe_device("cpu", _workload("model.kind=cnn"), InputShape((4,), 3, "classification"), DeviceConfig(), 1.0)
    assert result.ms_per_step is None and result.error.startswith("probe failed: model.kind = 'cnn' needs image-shaped")


def test_threads_never_exceed_the_usable_cores():
    assert resolve_threads(None, 2) == (2, None)
    assert resolve_threads(1, 2) == (1, None)
    threads, warning = resolve_threads(8, 2)
    assert threads == 2 and "device.threads=8 is more than the 2 core(s)" in warning
    assert [threads_per_worker(w, cores=2) for w in (1, 2, 4)] == [2, 1, 1]
    assert threads_per_worker(3, cores=16) == 5


def test_select_device_sets_threads_to_the_usable_cores(capsys):
    old = torch.get_num_threads()
    try:
        info = select_device(DeviceConfig(name="cpu"))
        assert info.device == "cpu" and info.torch_device == CPU
        assert info.threads == available_cores() == torch.get_num_threads()
        info = select_device(DeviceConfig(name="cpu", threads=1))
        assert info.threads == 1 == torch.get_num_threads()
        info = select_device(DeviceConfig(name="cpu", threads=available_cores() + 3))
        assert info.threads == available_cores() == torch.get_num_threads()
        assert "is more than the" in capsys.readouterr().err
    finally:
        torch.set_num_threads(old)


def _train_on(info: DeviceInfo, *overrides: str):
    config = load_config(None, tiny_overrides(**dict(o.split("=", 1) for o in overrides)))
    data = prepare_data(config.data, seed=0)
    parts = build_model(ModelSetup.of(config), data.spec, CPU)
    return train_model(parts, data, config.train, info, 0), parts


def _info(**fields) -> DeviceInfo:
    return decide_device(DeviceConfig(name="cpu", **fields), None, ("cpu",), torch.get_num_threads())


def test_per_batch_copies_train_exactly_like_data_moved_once():
    once, parts_once = _train_on(_info())
    streamed, parts_streamed = _train_on(_info(data_on_device="never"))
    assert (once.data_placement, streamed.data_placement) == ("device", "host")
    assert [r.train_loss for r in once.history] == [r.train_loss for r in streamed.history]
    assert [r.val_loss for r in once.history] == [r.val_loss for r in streamed.history]
    for a, b in zip(parts_once.model.parameters(), parts_streamed.model.parameters()):
        assert torch.equal(a, b)


def test_bf16_autocast_trains_on_the_cpu_and_is_recorded():
    result, _ = _train_on(_info(precision="bf16"), "train.epochs=15", "train.early_stopping.enabled=false")
    assert result.precision == "bf16"
    assert result.history[-1].val_accuracy >= 0.8
    assert result.history[-1].train_loss < result.history[0].train_loss


# --------------------------------------------------------------------------- CUDA (skipped without it)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_selected_when_requested():
    info = select_device(DeviceConfig(name="cuda"))
    assert info.device == "cuda:0"
    assert torch.zeros(1, device=info.torch_device).device.type == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_measures_cpu_and_cuda_for_real(tmp_path):
    info = select_device(_auto(tmp_path), _workload())
    assert [c.device for c in info.candidates][:2] == ["cpu", "cuda:0"]
    assert all(c.ms_per_step and c.ms_per_step > 0 for c in info.candidates)
    assert select_device(_auto(tmp_path), _workload()).from_cache


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fields", [{}, {"data_on_device": "never"}, {"precision": "bf16"}, {"precision": "fp16"},
                                    {"cudnn_benchmark": True, "tf32": True}])
def test_cuda_training_paths_learn(fields):
    info = decide_device(DeviceConfig(name="cuda", **fields), None, available_devices(), 1)
    config = load_config(None, tiny_overrides(**{"train.epochs": "15", "train.early_stopping.enabled": "false"}))
    data = prepare_data(config.data, seed=0)
    parts = build_model(ModelSetup.of(config), data.spec, info.torch_device)
    result = train_model(parts, data, config.train, info, 0)
    assert result.history[-1].val_accuracy >= 0.8
    assert result.data_placement == ("host" if fields.get("data_on_device") == "never" else "device")
    assert result.precision == fields.get("precision", "fp32")


@pytest.mark.slow
def test_the_flow_records_the_measurement_and_a_repeat_run_reuses_it(prefect_api, tmp_path, monkeypatch):
    """auto on a machine with a second device: here a CUDA device this build cannot use, so its probe fails."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    import tasks.device
    from flows.train import format_summary, train_flow

    second = "cuda:0"
    if torch.cuda.is_available():
        pytest.skip("this machine has a real CUDA device; test_auto_measures_cpu_and_cuda_for_real covers it")
    monkeypatch.setattr(tasks.device, "available_devices", lambda: ("cpu", second))
    config = load_config(None, tiny_overrides(device="auto", **{"device.cache_dir": str(tmp_path / "cache")}))

    state = train_flow(config=config, run_dir=str(tmp_path / "a"), return_state=True)
    summary = state.result()
    recorded = json.loads((tmp_path / "a" / "device.json").read_text())
    assert recorded["device"] == summary.device == "cpu" and not recorded["from_cache"]
    assert [row["device"] for row in recorded["table"]] == ["cpu", second]
    assert recorded["table"][0]["ms_per_step"] > 0 and recorded["table"][0]["chosen"]
    assert recorded["table"][1]["ms_per_step"] is None and recorded["table"][1]["note"].startswith("probe failed")
    assert 0 < recorded["probe_seconds"] < 3
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["device"]["candidates"] == recorded["candidates"]
    text = format_summary(summary)
    assert "          cpu" in text and "ms/step (chosen)" in text and f"{second:<8} probe failed" in text

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    table = next(a for a in artifacts if a.key == "device-selection")
    assert "cpu" in str(table.data) and "Device selection: **cpu**" in table.description

    again = train_flow(config=config, run_dir=str(tmp_path / "b"))
    recorded_again = json.loads((tmp_path / "b" / "device.json").read_text())
    assert recorded_again["from_cache"] and recorded_again["probe_seconds"] == 0
    assert "cached decision, not re-measured" in again.device_reason
    assert again.test == summary.test  # the probe does not disturb the run's random streams


def test_the_data_shape_is_read_only_when_auto_measures(tmp_path):
    """probe_workload peeks at the data's headers lazily: a missing file costs nothing until auto measures."""
    from schemas.device import ProbeWorkload

    config = load_config(None, tiny_overrides(**{"data.source": f"{{kind: csv, path: {tmp_path / 'gone.csv'}, target: y}}"}))
    workload = probe_workload(config)  # no error yet: nothing was read
    with pytest.raises(DataError, match="gone.csv"):
        decide_device(_auto(tmp_path), workload, ("cpu", "cuda:0"), 2, FakeProbe({"cpu": 1.0, "cuda:0": 1.0}))
    bare = ProbeWorkload(**workload.model_dump(exclude={"input_shape"}))
    with pytest.raises(ConfigError, match="no input shape"):
        decide_device(_auto(tmp_path), bare, ("cpu", "cuda:0"), 2, FakeProbe({"cpu": 1.0, "cuda:0": 1.0}))


# --------------------------------------------------------------------------- threads: auto


class ThreadProbe:
    """Injected CPU timings by torch thread count; records the counts it was called with."""

    def __init__(self, timings: dict[int, float]) -> None:
        self.timings = timings
        self.calls: list[int] = []

    def __call__(self, device, workload, shape, config, budget):
        n = torch.get_num_threads()
        self.calls.append(n)
        return Candidate(device=device, ms_per_step=self.timings[n], steps=5, probe_seconds=0.01)


def _tc(threads: int, ms: float | None) -> Candidate:
    return Candidate(device="cpu", threads=threads, ms_per_step=ms, steps=5, probe_seconds=0.01)


def test_threads_auto_is_the_default_and_numbers_still_work():
    assert DeviceConfig().threads == "auto"
    assert load_config(None, ["device.threads=1"]).device.threads == 1
    assert load_config(None, ["device.threads=null"]).device.threads is None
    with pytest.raises(ConfigError, match="device.threads"):
        load_config(None, ["device.threads=0"])
    with pytest.raises(ConfigError, match="device.threads"):
        load_config(None, ["device.threads=many"])


def test_thread_counts_and_the_fewest_within_the_margin():
    assert thread_counts(1) == (1,) and thread_counts(2) == (1, 2) and thread_counts(8) == (1, 4, 8)
    assert choose_threads([_tc(1, 1.0), _tc(2, 0.95)], 0.10, 2)[0] == 1  # 5% faster: not worth a busy core
    threads, reason = choose_threads([_tc(1, 1.0), _tc(2, 0.6)], 0.10, 2)
    assert threads == 2 and reason.startswith("threads auto: 2 (1 thread(s) 1, 2 thread(s) 0.6 ms/step")
    assert choose_threads([_tc(1, 2.0), _tc(4, 1.0), _tc(8, 1.05)], 0.10, 8)[0] == 4
    assert choose_threads([_tc(1, None), _tc(2, None)], 0.10, 2)[0] == 2


def test_threads_auto_measures_each_count_interleaved_then_reuses_the_cache(tmp_path):
    before = torch.get_num_threads()
    probe = ThreadProbe({1: 2.0, 2: 1.0, 4: 0.95})
    threads, reason, candidates, cached = decide_threads(_auto(tmp_path), _workload(), 4, probe)
    assert probe.calls == [1, 2, 4] * 3 and torch.get_num_threads() == before  # restored
    assert (threads, cached) == (2, False) and [c.threads for c in candidates] == [1, 2, 4]
    probe.timings = {1: 0.1, 2: 9.0, 4: 9.0}  # would change the answer if measured
    threads, reason, _, cached = decide_threads(_auto(tmp_path), _workload(), 4, probe)
    assert (threads, cached, len(probe.calls)) == (2, True, 9) and reason.endswith("[cached]")
    threads, _, _, cached = decide_threads(_auto(tmp_path, remeasure=True), _workload(), 4, probe)
    assert (threads, cached) == (1, False)


def test_threads_auto_measures_nothing_without_a_cpu_workload(tmp_path):
    probe = ThreadProbe({})
    assert decide_threads(_auto(tmp_path), _workload(), 1, probe)[:2] == (1, "threads auto: 1 usable core")
    assert decide_threads(_auto(tmp_path), None, 2, probe)[0] == 2
    assert decide_threads(DeviceConfig(name="cuda", cache_dir=str(tmp_path)), _workload(), 2, probe)[0] == 2
    assert probe.calls == []


def test_select_device_records_how_threads_were_chosen(tmp_path, capsys):
    old = torch.get_num_threads()
    try:
        info = select_device(DeviceConfig(name="cpu", cache_dir=str(tmp_path)), _workload())
        assert info.threads == torch.get_num_threads() and info.threads_reason.startswith("threads auto:")
        if available_cores() > 1:
            assert [c.threads for c in info.thread_candidates] == list(thread_counts(available_cores()))
        assert select_device(DeviceConfig(name="cpu", threads=1)).threads_reason == "device.threads set"
    finally:
        torch.set_num_threads(old)


POLICY_AT_TORCH_IMPORT = """
import builtins, os, runpy, sys
seen = []
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name == "torch" and not seen:
        seen.append(os.environ.get("OMP_WAIT_POLICY"))
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print([seen, os.environ.get("OMP_WAIT_POLICY")])  # what torch saw here; what child processes inherit
"""


MISSING_DATA = "data.source={kind: csv, path: missing.csv, target: y}"
# Arguments that make each command import torch and stop: --help, or for the flows (which answer --help before
# importing torch) a run whose data file is missing, reported by the data check after the imports.
ARGUMENTS = {
    "flows.train": ["--set", MISSING_DATA],
    "flows.sweep": ["--config", "configs/sweep_digits.yaml", "--set", f"base.{MISSING_DATA}"],
    "flows.predict": ["--help"],
    "deployments.serve": ["--help"],
}


@pytest.mark.parametrize("module", list(ARGUMENTS))
@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_every_entry_point_sets_a_passive_openmp_wait_before_torch_loads(module, user):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run(
        [sys.executable, "-c", POLICY_AT_TORCH_IMPORT, module, *ARGUMENTS[module]],
        env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    seen, inherited = eval(out.stdout.strip().splitlines()[-1])
    expected = user or "PASSIVE"
    # deployments.serve imports torch only in the runs it starts, which inherit the variable
    assert seen == ([] if module == "deployments.serve" else [expected]) and inherited == expected, out.stderr
