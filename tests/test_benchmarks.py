"""Smoke tests for the benchmarks at tiny sizes (no timing targets): each case runs and reports sane numbers."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.train_throughput import Workload, format_report, run_workload
from tests.conftest import ROOT


def test_train_throughput_runs_all_three_cases():
    workload = Workload("iris-tiny", ("data.source.name=iris", "model.hidden_sizes=[8]"), epochs=1)
    result = run_workload(workload, rounds=1)

    assert set(result.cases) == {"A", "B", "C"}
    for stats in result.cases.values():
        assert len(stats.samples_per_second) == 1
        assert all(rate > 0 for rate in stats.samples_per_second)
    assert set(result.ratios) == {"A/B", "A/C", "A/B train-only", "A/C train-only"}
    assert all(math.isfinite(ratio) and ratio > 0 for ratio in result.ratios.values())
    assert all(len(values) == 1 for values in result.round_ratios.values())
    # A and B share init, batch order and dropout seed: the same training, so the same val loss.
    assert math.isclose(result.cases["A"].val_loss, result.cases["B"].val_loss, rel_tol=1e-6)
    assert "iris-tiny" in format_report([result], threads=1, rounds=1, restore_best=False)


def test_device_selection_benchmark_reports_the_probe_share(monkeypatch, tmp_path):
    from benchmarks import device_selection

    rows = device_selection.probe_all(["data.source.name=iris", "model.hidden_sizes=[8]"])
    assert list(rows)[0] == "cpu" and rows["cpu"][0] > 0 and 0 < rows["cpu"][1] < 5

    # The cold flow run is a 30-second subprocess; test_flows covers it. Here it reports fixed figures.
    monkeypatch.setattr(device_selection, "cold_run", lambda directory: (20.0, 1.0))
    text = device_selection.main(["--rounds", "1", "--output", str(tmp_path / "out.md")])
    assert "cold `python -m flows.train`, default config | 20.0 s" in text
    share = float(text.split("**probe / cold run** (target <= 3%) | **")[1].split("%")[0])
    probe_ms = float(text.split("| probe of all devices, default config | ")[1].split(" ms")[0])
    assert abs(share - probe_ms / 20_000 * 100) < 0.01 and share < 25  # the probe's time over the 20 s run
    assert "| tiny: digits MLP [128, 64], batch 64 | cpu |" in text and "| yes |" in text
    assert "failed" not in text  # the default and the larger model both train in the probe
    assert (tmp_path / "out.md").read_text().strip() == text


def test_sweep_scaling_runs_serial_and_parallel_with_equal_results():
    from benchmarks.sweep_scaling import format_report, run_benchmark

    result = run_benchmark(rows=600, epochs=1, rounds=1, hidden=16, warm_up=False)
    for runs in (result.serial, result.serial_one_thread, result.parallel):
        assert len(runs) == 1 and runs[0].seconds > 0 and len(runs[0].values) == 4
        assert runs[0].peak_rss_mib > 0 and runs[0].peak_pss_mib > 0
    assert result.parallel[0].values == result.serial_one_thread[0].values  # same trials, bit for bit
    assert result.parallel[0].data_loads == (1, 1, 1, 1)  # each worker loaded the data once
    assert math.isfinite(result.ratio) and result.ratio > 0
    assert "Speed-up S/P" in format_report(result, rows=600, epochs=1)


def test_train_throughput_lightning_case_d():
    pytest.importorskip("lightning")
    workload = Workload("iris-tiny", ("data.source.name=iris", "model.hidden_sizes=[8]"), epochs=1)
    result = run_workload(workload, rounds=1, restore_best=False, cases=("A", "B", "C", "D"))

    assert set(result.cases) == {"A", "B", "C", "D"}
    d = result.cases["D"]
    assert d.samples_per_second[0] > 0 and d.train_only_samples_per_second is None
    assert math.isfinite(d.val_loss) and 0 <= d.val_accuracy <= 1  # D validated on the val split
    assert all(stats.peak_rss_delta_mib >= 0 for stats in result.cases.values())
    assert math.isfinite(result.ratios["A/D"]) and result.ratios["A/D"] > 0
    report = format_report([result], threads=1, rounds=1, restore_best=False)
    assert "| D lightning |" in report and "A >= 2x D" in report


def test_train_throughput_without_lightning_explains(monkeypatch):
    import builtins

    from benchmarks import train_throughput

    real_import = builtins.__import__

    def no_lightning(name, *args, **kwargs):
        if name == "lightning" or name.startswith("lightning."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightning)
    assert not train_throughput.lightning_available()
    with pytest.raises(SystemExit, match=r"pip install .*\[bench\]"):
        train_throughput.time_lightning(*train_throughput.load_workload(
            Workload("iris-tiny", ("data.source.name=iris", "model.hidden_sizes=[8]"), epochs=1)
        ))


def test_bundle_io_runs_save_and_load_cases():
    from benchmarks.bundle_io import CASES, format_report, run_benchmark

    results = run_benchmark(rounds=1, large_hidden=16)  # the "large" model at a tiny width
    assert len(results) == 2
    for result in results:
        assert result.parameters > 0 and result.bundle_bytes > 0 and result.base_bytes > 0
        for case in CASES:
            assert len(result.seconds[case]) == 1 and result.seconds[case][0] > 0
        for kind in ("save", "load", "load, full check", "load + first forward"):
            ratio = result.ratio(f"bundle {kind}", f"base {kind.replace(', full check', '')}")
            assert math.isfinite(ratio) and ratio > 0
        assert result.peak_rss_mib > 0 and min(result.load_rss_delta_mib["bundle load"]) >= 0
    report = format_report(results, rounds=1, threads=1)
    assert "| MLP 4 x 16 |" in report and "| bundle load, full check |" in report and "| base load, mmap |" in report


def test_orchestration_plain_stages_and_import_breakdown(tmp_path):
    from benchmarks import orchestration
    from tests.conftest import tiny_overrides

    stages = orchestration.run_plain_stages(tmp_path / "run", tuple(tiny_overrides()))
    for name in ("import", "device", "data", "model", "train", "evaluate", "save", "record", "total_in_process"):
        assert math.isfinite(stages[name]) and stages[name] >= 0
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "model" / "bundle.json").is_file()

    text = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |     numpy.core",
        "import time:       200 |        300 |   numpy",
        "import time:       400 |        400 |     torch._C",
        "import time:      1000 |       1400 |   torch",
        "import time:        50 |       1750 | tasks.model",
        "import time:        30 |         30 | json",
    ])
    groups = orchestration.parse_importtime(text)
    assert math.isclose(groups["torch"], 0.0014) and math.isclose(groups["project"], 0.00035)
    assert math.isclose(groups["other"], 0.00003)


def test_orchestration_report_and_per_task_overhead(prefect_api, monkeypatch):
    from benchmarks import orchestration

    per_task = orchestration.measure_per_task(n_tasks=3, rounds=1)  # against the session's test server
    assert per_task["task_ms"] > -1000 and per_task["empty_flow_s"] > 0 and per_task["plain_call_ms"] >= 0

    # The cold runs take 30 s or more each; test_flows covers them. Here they report fixed figures.
    @contextlib.contextmanager
    def fake_server(env):
        yield {**env, "PREFECT_API_URL": "http://127.0.0.1:1/api"}

    monkeypatch.setattr(orchestration, "running_server", fake_server)
    monkeypatch.setattr(orchestration, "flow_run", lambda directory, env: (12.0, 2.0) if "PREFECT_API_URL" in env else (20.0, 2.0))
    monkeypatch.setattr(orchestration, "plain_run", lambda directory, env, peaks=None: (8.0, 2.1, {"import": 3.0, "train": 2.1}))
    monkeypatch.setattr(orchestration, "server_start_stop", lambda env: (4.0, 1.0))
    monkeypatch.setattr(orchestration, "per_task_overhead", lambda n, rounds, env: per_task)
    result = orchestration.run_benchmark(rounds=1, n_tasks=3, task_rounds=1)
    assert math.isclose(result.prefect_share, (18.0 - 5.9) / 20.0) and math.isclose(result.raw_share, 0.6)
    assert result.imports[0]["torch"] > 0 and result.imports[0]["prefect"] > 0
    report = orchestration.format_report(result)
    assert "**60.5%** (NOT met" in report and "per-task overhead" in report and "| torch |" in report
    assert math.isclose(result.running_share, (10.0 - 5.9) / 12.0) and "**34.2%** (NOT met)" in report


def test_finetune_benchmark_compares_with_scratch_and_the_feature_cache(tmp_path):
    import torch

    from benchmarks.finetune import Sizes, format_report, run_benchmark

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sizes = Sizes(per_class_a=10, per_class_b=8, test_per_class_b=3, size=16, pretrain_epochs=1, epochs=1, seeds=1,
                      timing_epochs=2)
        result = run_benchmark(sizes, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert len(result["fine"]) == len(result["full"]) == len(result["scratch"]) == 1
    assert all(0 <= value <= 1 for value in result["fine"] + result["full"] + result["scratch"])
    assert result["timing"][True]["cached"] and not result["timing"][False]["cached"]
    assert all(t["epoch"] > 0 for t in result["timing"].values())
    assert "epoch-time ratio off/on" in format_report(result)


def test_raw_tables_benchmark_scores_ours_and_the_references_on_the_same_holdout(tmp_path):
    from benchmarks.raw_tables import format_report, holdout_split, penguins_like, run_benchmark, sales_like

    small = [penguins_like(120), sales_like(120)]
    train_file, holdout = holdout_split(small[1], seed=0)
    assert (len(train_file), len(holdout)) == (96, 24)
    assert not set(map(tuple, train_file.astype(str).to_numpy())) & set(map(tuple, holdout.astype(str).to_numpy()))
    rows = run_benchmark(small, tmp_path, ("train.epochs=1", "model.hidden_sizes=[8]", "evaluate.folds=0"),
                         seeds=(0, 1))
    text = format_report(rows, None, "python -m benchmarks.raw_tables --quick")
    assert "| penguins-like" in text and "on a holdout" in text and "seeds 0, 1" in text
    assert "no possible leak" in text and "holdout inside" in text
    for row in rows:
        assert len(row["ours"]) == 2 and all(len(runs) == 2 for runs in row["references"].values())
        assert all(math.isfinite(run["holdout"]) for run in row["ours"])
        assert all(math.isfinite(run[0]) for runs in row["references"].values() for run in runs)
    # Each seed draws its own holdout: the references score other rows.
    ridge = rows[1]["references"]["one-hot + median + ridge"]
    assert ridge[0][0] != ridge[1][0]


@pytest.mark.slow
def test_distributed_training_benchmark_compares_ranks_with_one_process(monkeypatch):
    from benchmarks import distributed_training as bench

    monkeypatch.setitem(bench.WORKLOADS, "iris", ("data.source.name=iris", "model.hidden_sizes=[8]"))
    rows = bench.cpu_rows(epochs=1, rounds=1, names=["iris"])
    assert [row.split(" | ")[1] for row in rows] == [
        "1 process x 2 threads", "1 process x 1 thread", "2 ranks x 1 thread (gloo)", "**R/P**", "**R/P1**",
    ]
    assert all(float(row.split(" | ")[2].split(" ")[0].replace(",", "")) > 0 for row in rows[:3])
    if torch_cuda_devices() < 2:
        assert "Not measured" in "\n".join(bench.gpu_section(epochs=1))


def torch_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def test_busy_machine_measures_the_default_in_a_fresh_process_and_reports_ratios(tmp_path):
    from benchmarks.busy_machine import Cell, format_report, measure

    result = measure("digits-mlp", 1, "D", 2, str(tmp_path / "cache"))
    assert result["policy"] == "PASSIVE" and result["threads"] >= 1 and 0 <= result["probe"] < result["seconds"]
    cells = {
        ("digits-mlp", state, case): Cell([s], [p], [1])
        for state in ("quiet", "busy")
        for case, s, p in (("D", 1.1, 0.1), ("1", 1.0, 0.0), ("N", 5.0, 0.0))
    }
    text = format_report(cells, ["digits-mlp"], {"digits-mlp": 1}, 1, 1, 2)
    assert "| digits-mlp | 1 | busy | 1.00 (1.00-1.00) [1] | 0.10 | 1.00 (1.00-1.00) | 5.00 (5.00-5.00) | **1.00**" in text
    assert "| met | 1.10 |" in text and "met in every case" in text


def test_feedback_benchmark_times_whole_commands_and_reports_each_pair(tmp_path):
    from benchmarks.feedback import PAIRS, Case, format_report, run_once
    from benchmarks.orchestration import _env

    case = Case("data error, missing file", ["-m", "flows.train", "--set", "data.source={kind: csv, path: missing.csv, target: y}"], 3)
    run_once(case, _env(tmp_path / "prefect-home"))  # answers before any Prefect server starts
    assert len(case.wall) == 1 and case.wall[0] > 0 and case.cpu[0] > 0
    cases = [Case(label, [], wall=[2.0], cpu=[1.0]) for label in {p[0] for p in PAIRS} | {p[1] for p in PAIRS}]
    cases[[c.label for c in cases].index("predict 5 rows")].wall = [3.5]
    text = format_report(cases, 1)
    assert "| predict 5 rows | 3.50 (3.50-3.50) | 1.00 | import torch, pandas, safetensors | 2.00 (2.00-2.00) | 1.00 | **1.75**" in text
    assert "<= 1.5: NOT met" in text and "| data error, missing file |" in text and "<= 2.0: met" in text


# --------------------------------------------------------------------------- start-up and the GPU check


def test_the_plain_script_follows_the_default_config():
    from benchmarks.plain_train import DEFAULTS
    from schemas.run import RunConfig

    config = RunConfig().model_dump()
    for key, value in DEFAULTS.items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == value, f"benchmarks/plain_train.py uses {key}={value}; the default is {node}"


def test_startup_report_gives_each_pair_its_ratio_and_the_launch_its_goal():
    from benchmarks.startup import Timed, flow_run_times, format_report

    plain, cold, running = Timed(4.0, 5.0, 1.5, 30), Timed(6.4, 7.0, 1.4, 26), Timed(4.8, 6.0, 1.4, 26)
    pairs = {"cold": [(plain, cold)] * 3, "running": [(plain, running)] * 3}
    launch = [(Timed(5.0, 5.0, 1.0, 2), Timed(13.0, 14.0, 1.0, 2))]
    marks = {"server_start": 0.5, "server_healthy": 5.0, "session": 3.0, "waiting": 4.0, "server_ready": 5.1,
             "flow_start": 5.3, "flow_end": 6.0, "training": 0.4, "flow_returned": 6.1, "exit": 6.4}
    profiled = {"cold": marks, "running": {k: v for k, v in marks.items() if not k.startswith("server_")},
                "server": {"start": 4.5, "stop": 0.2}, "imports flows.train": {"prefect": 1.0, "torch": 1.1},
                "imports plain": {"torch": 1.1}}
    text = format_report(pairs, launch, profiled, 3)
    assert "| **1.60** (1.60-1.60) | <= 1.5: NOT met |" in text  # cold: 6.4 / 4.0
    assert "| **1.20** (1.20-1.20) | <= 1.25: met |" in text  # running: 4.8 / 4.0
    assert "**3.00** (3.00-3.00); <= 2.0: NOT met" in text  # (13 - 1) / (5 - 1)
    assert "| Prefect's server: launched -> answering | 4.50 | - |" in text
    assert "| imports made while the server starts (session -> waiting) | 1.00 |" in text
    assert "| waiting for the server (-> it answers) | 1.10 | - |" in text
    assert flow_run_times(Path("/nonexistent")) == {}


def test_the_gpu_check_says_there_is_no_cuda_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run python -m benchmarks.gpu_check itself")
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA device here") and "nothing to check" in done.stdout


@pytest.mark.slow
def test_the_gpu_checks_rehearsed_on_the_cpu_run_the_real_stages(tmp_path):
    from benchmarks import gpu_check

    output = tmp_path / "gpu.md"
    only = "precision,fused optimizer,data on device,resume,throughput"
    assert gpu_check.main(["--device", "cpu", "--only", only, "--output", str(output)]) == 0
    rows = [line for line in output.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        "precision (CNN)", "fused optimizer (CNN)", "data on device (CNN)",
        "resume on the device (MLP, cut after epoch 3)", "throughput (CNN)",
    ]
    assert not [row for row in rows if "FAILED" in row], rows
    assert "weights identical; history identical" in output.read_text()
