"""Training on a quiet and on a busy machine: the default thread policy against the best fixed thread count.

    python -m benchmarks.busy_machine                   # digits MLP and CNN, quiet and busy, 3 rounds
    python -m benchmarks.busy_machine --quick           # 1 round, fewer epochs
    python -m benchmarks.busy_machine --rounds 3 --output /tmp/busy.md

Each measurement is a fresh process, because OpenMP reads its wait policy
once, when torch loads. The cases, interleaved round by round (order rotating):

  D  default   what the commands do: OMP_WAIT_POLICY=PASSIVE set before torch
               loads (tasks.common.omp) and `device.threads: auto`, measuring
               its thread counts afresh (an empty cache: the probe is counted)
  1  threads=1 a fixed single thread, OpenMP's own default wait policy
  N  threads=N every usable core, OpenMP's own default wait policy (torch's own default)

"busy" runs the same cases beside `--neighbours` CPU-bound processes (a
Python busy loop each), started before the round and stopped after it. The
time is training (`train_model`); D's thread probe, a first run's one-time
cost, is timed apart. The data is prepared and torch's lazy imports are paid
before the clock starts. Goal: D / min(1, N) <= 1.2, quiet and busy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = {"digits-mlp": "configs/digits_mlp.yaml", "digits-cnn": "configs/digits_cnn.yaml"}
ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"


def child(preset: str, epochs: int, case: str, cache_dir: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line with its seconds."""
    if case == "D":
        from tasks.common.omp import passive_openmp_default

        passive_openmp_default()
    from benchmarks._common import timed_stages
    from schemas.loading import load_config
    from tasks.device import warm_process
    from tasks.recipe import run_recipe

    threads = {"D": "auto", "1": "1"}.get(case, case)
    config = load_config(ROOT / PRESETS[preset], [
        f"train.epochs={epochs}", "train.early_stopping.patience=100000", "train.progress=false",
        "device=cpu", f"device.threads={threads}", f"device.cache_dir={cache_dir}", "device.remeasure=true",
    ])
    warm_process()
    times: dict[str, float] = {}
    run = run_recipe(config, stages=timed_stages(times, select_device="probe", train_model="train"))
    print(json.dumps({
        "seconds": times["probe"] + times["train"], "probe": times["probe"], "threads": run.device.threads,
        "policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }))


@dataclass
class Cell:
    seconds: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)


def measure(preset: str, epochs: int, case: str, cores: int, cache_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    arg = {"N": str(cores)}.get(case, case)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.busy_machine", "--child", preset, str(epochs), arg, cache_dir],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{preset} case {case}: exit {out.returncode}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def neighbours(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
        p.wait()


def run(presets: list[str], epochs: dict[str, int], rounds: int, n_neighbours: int, cores: int) -> dict:
    """{(preset, state, case): Cell}, every case measured `rounds` times, interleaved with a rotating order."""
    cases = ["D", "1", "N"] if cores > 1 else ["D", "1"]
    cells: dict = {}
    with tempfile.TemporaryDirectory(prefix="busy-") as tmp:
        for r in range(rounds):
            order = cases[r % len(cases):] + cases[: r % len(cases)]
            for state in ("quiet", "busy"):
                load = neighbours(n_neighbours) if state == "busy" else []
                try:
                    for preset in presets:
                        for case in order:
                            result = measure(preset, epochs[preset], case, cores, f"{tmp}/{preset}-{state}-{case}-{r}")
                            cell = cells.setdefault((preset, state, case), Cell())
                            cell.seconds.append(result["seconds"])
                            cell.probe.append(result["probe"])
                            cell.threads.append(result["threads"])
                            print(f"  round {r + 1} {state} {preset} {case}: {result['seconds']:.2f} s "
                                  f"(threads {result['threads']})", file=sys.stderr, flush=True)
                finally:
                    stop(load)
    return cells


def format_report(cells: dict, presets: list[str], epochs: dict[str, int], rounds: int, n_neighbours: int, cores: int) -> str:
    from benchmarks._common import median, span

    lines = [
        f"## Busy machine: default thread policy against the best fixed thread count ({cores} usable cores, "
        f"{rounds} round(s), busy = {n_neighbours} CPU-bound neighbour process(es))",
        "",
        "- D default: OMP_WAIT_POLICY=PASSIVE before torch loads, `device.threads: auto` measured afresh",
        "- 1: `device.threads=1`; N: `device.threads=N` (all usable cores); both with OpenMP's own wait policy",
        "- training s: `train_model` in a fresh process; D's thread probe (a first run's one-time cost, cached "
        "for later runs with the same hardware, model and batch size) is shown apart and in the last ratio",
        "",
        "| workload | epochs | machine | D training s (min-max) [threads chosen] | D probe s | 1 thread s | N threads s "
        "| **D / best fixed, training** (per-round spread) | goal <= 1.2 | (D + probe) / best fixed |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---:|",
    ]
    verdicts = []
    for preset in presets:
        for state in ("quiet", "busy"):
            d, one, many = (cells.get((preset, state, c)) for c in ("D", "1", "N"))
            train = [s - p for s, p in zip(d.seconds, d.probe)]
            best = [min(pair) for pair in zip(one.seconds, many.seconds)] if many else one.seconds
            best_median = min(median(one.seconds), median(many.seconds) if many else float("inf"))
            ratio = median(train) / best_median
            verdicts.append(ratio <= 1.2)
            chosen = ",".join(str(t) for t in sorted(set(d.threads)))
            lines.append(
                f"| {preset} | {epochs[preset]} | {state} | {median(train):.2f} ({span(train)}) [{chosen}] | "
                f"{median(d.probe):.2f} | {median(one.seconds):.2f} ({span(one.seconds)}) | "
                + (f"{median(many.seconds):.2f} ({span(many.seconds)})" if many else "-")
                + f" | **{ratio:.2f}** ({span([t / b for t, b in zip(train, best)])}) | "
                f"{'met' if ratio <= 1.2 else 'NOT met'} | {median(d.seconds) / best_median:.2f} |"
            )
    lines += ["", f"Goal D / best fixed <= 1.2 (training): {'met in every case' if all(verdicts) else 'NOT met in every case'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), argv[3], argv[4])
        return ""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.busy_machine", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 5 epochs")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each workload (default 20; --quick 5)")
    parser.add_argument("--neighbours", type=int, default=1, help="CPU-bound processes on the busy machine (default 1)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated, of: " + ", ".join(PRESETS))
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    from benchmarks._common import emit_report
    from tasks.device._threads import available_cores

    rounds = args.rounds or (1 if args.quick else 3)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    epochs = {p: args.epochs or (5 if args.quick else 20) for p in presets}
    cores = available_cores()
    cells = run(presets, epochs, rounds, args.neighbours, cores)
    report = format_report(cells, presets, epochs, rounds, args.neighbours, cores)
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
