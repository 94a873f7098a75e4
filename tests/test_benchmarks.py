"""Smoke test for the training-throughput benchmark at a tiny size (no timing targets)."""

from __future__ import annotations

import math

from benchmarks.train_throughput import Workload, format_report, run_workload


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
    assert 0 < share < 25
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
