"""Device selection: what `device: auto`'s probe costs, and what it measures.

    python -m benchmarks.device_selection            # 3 cold runs of the default flow; both workloads
    python -m benchmarks.device_selection --quick    # 1 cold run
    python -m benchmarks.device_selection --output out.md

1. Probe cost. `auto` measures every available device; with the CPU alone it
   has nothing to measure and costs nothing, so to show the cost anyway this
   times the probe of every available device *including the CPU* for the
   default config, exactly as `decide_device` runs it (warm-up plus up to
   `device.probe_steps` timed steps within `device.probe_seconds`), after
   torch's one-time imports that every run pays. Its median is divided by the
   median wall time of a cold `python -m flows.train` on the default config
   (a fresh process: imports, Prefect's temporary server, data, training,
   evaluation, bundle), measured in the same run. Target: at most 3%.

2. Candidates. For a tiny model (the default digits MLP [128, 64], batch 64) and a
   larger one (an MLP of 3 x 2048 units on the same input, batch 1024), each
   available device's measured time per training step, copies included, and
   the device `auto` chooses with the default margin. On a machine with one
   device this is the CPU row alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from schemas.loading import load_config
from tasks.data import peek_shape
from schemas.device import Candidate
from tasks.data import probe_workload
from tasks.device import available_cores, available_devices, choose, probe_device, warm_process

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "tiny: digits MLP [128, 64], batch 64": [],
    "larger: MLP [2048, 2048, 2048], batch 1024": ["model.hidden_sizes=[2048, 2048, 2048]", "train.batch_size=1024"],
}


def cold_run(directory: Path) -> tuple[float, float]:
    """(wall seconds, training seconds) of `python -m flows.train` on the default config, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flows.train", "--run-dir", str(directory), "--set", "train.progress=false"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    metrics = json.loads((directory / "metrics.json").read_text())
    return wall, metrics["training"]["seconds"]


def probe_all(overrides: list[str]) -> dict[str, tuple[float | None, float]]:
    """device -> (ms per step, probe seconds) for every available device, as auto would measure them."""
    config = load_config(None, ["device=auto", *overrides])
    workload = probe_workload(config)
    shape = peek_shape(config.data)
    devices = available_devices()
    budget = config.device.probe_seconds / len(devices)
    results = {}
    for device in devices:
        candidate = probe_device(device, workload, shape, config.device, budget)
        results[device] = (candidate.ms_per_step, candidate.probe_seconds)
    return results


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_selection", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one cold run, fewer probe rounds")
    parser.add_argument("--rounds", type=int, help="cold runs and probe rounds (default 3; 1 with --quick)")
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    torch.set_num_threads(available_cores())
    warm_process()

    walls, trains, probes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):  # interleaved: a cold run, then a probe, each round
            wall, train = cold_run(Path(tmp) / f"run{i}")
            walls.append(wall)
            trains.append(train)
            probes.append(sum(seconds for _, seconds in probe_all([]).values()))
    wall, train, probe = statistics.median(walls), statistics.median(trains), statistics.median(probes)

    lines = [
        f"Device selection ({available_cores()} cores, torch {torch.__version__}, devices: "
        f"{', '.join(available_devices())}; {rounds} round(s))",
        "",
        "| measure | median | min-max |",
        "|---|---|---|",
        f"| probe of all devices, default config | {probe * 1000:.0f} ms | {min(probes) * 1000:.0f}-{max(probes) * 1000:.0f} ms |",
        f"| cold `python -m flows.train`, default config | {wall:.1f} s | {min(walls):.1f}-{max(walls):.1f} s |",
        f"| training inside it | {train:.2f} s | {min(trains):.2f}-{max(trains):.2f} s |",
        f"| **probe / cold run** (target <= 3%) | **{probe / wall:.2%}** | |",
        f"| probe / training time | {probe / train:.1%} | |",
        "",
        "| workload | device | ms/step (median) | chosen by auto |",
        "|---|---|---|---|",
    ]
    for name, overrides in WORKLOADS.items():
        runs = [probe_all(overrides) for _ in range(max(1, rounds))]
        medians = {}
        for device in runs[0]:
            values = [r[device][0] for r in runs if r[device][0] is not None]
            medians[device] = statistics.median(values) if values else None
        chosen, _ = choose(
            [Candidate(device=d, ms_per_step=m, steps=1, probe_seconds=0) for d, m in medians.items()], 0.10
        )
        for device, ms in medians.items():
            shown = "failed" if ms is None else f"{ms:.4g}"
            lines.append(f"| {name} | {device} | {shown} | {'yes' if device == chosen else ''} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines += ["", f"Peak RSS: {peak:.0f} MiB in this process, {children:.0f} MiB in the largest cold run."]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
