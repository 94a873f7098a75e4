"""Fast feedback: whole commands against the imports or the plain script they cannot beat.

    python -m benchmarks.feedback                  # 3 rounds
    python -m benchmarks.feedback --quick          # 1 round
    python -m benchmarks.feedback --rounds 5 --output /tmp/feedback.md

Each case is a fresh process (wall and CPU time of it and the children it
waited for, the temporary Prefect server included), the order rotating from
round to round. Pairs, each with its goal:

  data error, missing file   `python -m flows.train --set data.source={kind: csv, path: missing.csv, ...}` (exit 3)
  data error, bad column     the same on a CSV without the target column (exit 3)
      against `python -c "import torch"`: <= 2x
  predict 5 rows             `python -m flows.predict` with a digits bundle, no server
      against `python -c "import torch, pandas, safetensors"`: <= 1.5x

The whole training job against a plain script, cold and with a running
server, is `benchmarks.startup`. All share a temporary PREFECT_HOME; a first,
untimed training run makes the bundle predict uses.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import emit_report, median, span
from benchmarks.orchestration import ROOT, _env

MISSING = "data.source={kind: csv, path: missing.csv, target: y}"


@dataclass
class Case:
    label: str
    args: list[str]
    exit_code: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


PAIRS = (  # (case, baseline, goal on the wall-time ratio)
    ("data error, missing file", "import torch", 2.0),
    ("data error, bad column", "import torch", 2.0),
    ("predict 5 rows", "import torch, pandas, safetensors", 1.5),
)


def run_once(case: Case, env: dict[str, str]) -> None:
    """Time `python ARGS` in a fresh process: wall, and user + system CPU of it and its waited-for children."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, *case.args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != case.exit_code:
            err.seek(0)
            raise RuntimeError(f"{case.label}: exit {code}, expected {case.exit_code}: {err.read()[-2000:]}")
    case.wall.append(wall)
    case.cpu.append(usage.ru_utime + usage.ru_stime)


def make_cases(tmp: Path, env: dict[str, str]) -> list[Case]:
    """The cases; trains the bundle predict uses (the untimed first run that migrates PREFECT_HOME)."""
    import pandas as pd

    bundle_run = tmp / "bundle-run"
    subprocess.run(
        [sys.executable, "-m", "flows.train", "--run-dir", str(bundle_run), "--set", "train.epochs=2"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=900,
    )
    from tasks.bundle import load_model

    names = load_model(bundle_run / "model").spec.feature_names
    pd.DataFrame(0.5, index=range(5), columns=list(names)).to_csv(tmp / "five.csv", index=False)
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0]}).to_csv(tmp / "nolabel.csv", index=False)
    return [
        Case("import torch", ["-c", "import torch"]),
        Case("data error, missing file", ["-m", "flows.train", "--set", MISSING], exit_code=3),
        Case("data error, bad column", [
            "-m", "flows.train", "--set", f"data.source={{kind: csv, path: {tmp / 'nolabel.csv'}, target: y}}",
        ], exit_code=3),
        Case("import torch, pandas, safetensors", ["-c", "import torch, pandas, safetensors"]),
        Case("predict 5 rows", [
            "-m", "flows.predict", "--model", str(bundle_run / "model"), "--input", str(tmp / "five.csv"),
            "--output", str(tmp / "predictions.csv"),
        ]),
    ]


def run_benchmark(rounds: int) -> list[Case]:
    with tempfile.TemporaryDirectory(prefix="feedback-") as name:
        tmp = Path(name)
        env = {k: v for k, v in _env(tmp / "prefect-home").items() if k != "OMP_WAIT_POLICY"}
        cases = make_cases(tmp, env)
        for r in range(rounds):
            for case in cases[r % len(cases):] + cases[: r % len(cases)]:
                timed = Case(case.label, case.args, case.exit_code)
                run_once(timed, env)
                case.wall += timed.wall
                case.cpu += timed.cpu
                print(f"  round {r + 1} {case.label}: {timed.wall[0]:.2f} s wall, {timed.cpu[0]:.2f} s CPU",
                      file=sys.stderr, flush=True)
    return cases


def format_report(cases: list[Case], rounds: int) -> str:
    by_label = {c.label: c for c in cases}
    lines = [
        f"## Fast feedback: whole commands against their floor ({rounds} round(s), each a fresh process, order rotating)",
        "",
        "| case | wall s (min-max) | CPU s | baseline | baseline wall s (min-max) | baseline CPU s "
        "| **wall ratio** (per-round spread) | CPU ratio | goal |",
        "|---|---|---:|---|---|---:|---:|---:|---|",
    ]
    for label, base_label, goal in PAIRS:
        case, base = by_label.get(label), by_label[base_label]
        if case is None or not case.wall:
            continue
        ratio = median(case.wall) / median(base.wall)
        spread = span([a / b for a, b in zip(case.wall, base.wall)])
        lines.append(
            f"| {label} | {median(case.wall):.2f} ({span(case.wall)}) | {median(case.cpu):.2f} | {base_label} | "
            f"{median(base.wall):.2f} ({span(base.wall)}) | {median(base.cpu):.2f} | **{ratio:.2f}** ({spread}) | "
            f"{median(case.cpu) / median(base.cpu):.2f} | <= {goal}: {'met' if ratio <= goal else 'NOT met'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feedback", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    cases = run_benchmark(rounds)
    report = format_report(cases, rounds)
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
