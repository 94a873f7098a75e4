"""Start-up: the whole default job against the same job as a plain script, and a two-rank launch.

    python -m benchmarks.startup                   # 5 rounds of pairs, 3 of the launch
    python -m benchmarks.startup --quick           # 1 round of each
    python -m benchmarks.startup --rounds 7 --output /tmp/startup.md

Whole processes, wall time from exec to exit, as a user waits for them:

  plain     `python benchmarks/plain_train.py DIR`: the default job as a course-style script,
            with OMP_WAIT_POLICY=PASSIVE (which `python -m flows.train` sets for itself)
  cold      `python -m flows.train --run-dir DIR` with no server running: the command
            starts a temporary Prefect server of its own
  running   the same while a reusable server runs (`python -m flows.server start`, started
            before the pair and stopped after it, outside the timing); the command finds it

Each round times the pairs (plain, cold) and (plain, running) back to back,
the order alternating from round to round; a ratio is taken per pair and the
result is the median of the pairs. Goals: cold <= 1.5x, running <= 1.25x.

Two-rank launch: `python -m flows.train` with `train.distributed.nproc_per_node=2`
against `=1` (2 epochs, no early stopping), both with the reusable server
running, interleaved. A run's start-up is its wall time minus its training
loop (metrics.json: rank 0's loop). Goal: the two-rank run's start-up at most
2x the one-rank run's. Their difference is the launch itself: spawning the
ranks, their imports, the rendezvous and the return of the weights.

Profile, after the timed rounds: one run per case through `benchmarks._timeline`
(exec, server start, server healthy, imports and data check done, the flow
run's start and end as Prefect's database has them, exit), Prefect's server
alone (start until it answers), and `-X importtime` self time per group of
`import flows.train` against the plain script's imports.

A first, untimed run migrates the benchmark's private PREFECT_HOME and fills
its device-decision cache, as a user's first run does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import emit_report, median, reusable_server, span

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"cold": 1.5, "running": 1.25, "launch": 2.0}
LAUNCH = ("train.epochs=2", "train.early_stopping.enabled=false", "train.progress=false")
PLAIN_IMPORTS = "import torch, safetensors.torch, sklearn.datasets, sklearn.model_selection, sklearn.preprocessing"


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float  # user + system of the process and the children it waited for
    train: float  # the training loop's seconds
    epochs: int


def environment(home: Path) -> dict[str, str]:
    """A private PREFECT_HOME and cache, no server named, quiet; each process sets its own OpenMP policy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OMP_WAIT_POLICY"))}
    env.update(PREFECT_HOME=str(home / "prefect-home"), XDG_CACHE_HOME=str(home / "cache"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def run(args: list[str], env: dict[str, str], metrics: Path) -> Timed:
    """Time `python ARGS` in a fresh process; training seconds and epochs from the metrics file it writes."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"python {' '.join(args)} failed: {err.read()[-3000:]}")
    values = json.loads(metrics.read_text())
    training = values.get("training", {})
    return Timed(wall, usage.ru_utime + usage.ru_stime, training.get("seconds", values.get("train_seconds", 0.0)),
                 training.get("epochs_run", values.get("epochs", 0)))


def run_case(case: str, directory: Path, env: dict[str, str], overrides: tuple[str, ...] = ()) -> Timed:
    if case == "plain":
        return run([str(ROOT / "benchmarks" / "plain_train.py"), str(directory)], {**env, "OMP_WAIT_POLICY": "PASSIVE"},
                   directory / "metrics.json")
    sets = [a for o in ("train.progress=false", *overrides) for a in ("--set", o)]
    return run(["-m", "flows.train", "--run-dir", str(directory), *sets], env, directory / "metrics.json")


def measure_pairs(rounds: int, tmp: Path, env: dict[str, str]) -> dict[str, list[tuple[Timed, Timed]]]:
    """(plain, case) pairs for the cold and running cases, the order within each pair alternating by round."""
    pairs: dict[str, list[tuple[Timed, Timed]]] = {"cold": [], "running": []}
    for index in range(rounds):
        for case in pairs:
            server = reusable_server(env) if case == "running" else contextlib.nullcontext()
            with server:
                order = ("plain", case) if index % 2 == 0 else (case, "plain")
                got = {name: run_case(name, tmp / f"{name}-{index}-{case}", env) for name in order}
            pairs[case].append((got["plain"], got[case]))
            print(f"startup: round {index + 1} {case}: {got[case].wall:.2f} s, plain {got['plain'].wall:.2f} s",
                  file=sys.stderr, flush=True)
    return pairs


def measure_launch(rounds: int, tmp: Path, env: dict[str, str]) -> list[tuple[Timed, Timed]]:
    """(one rank, two ranks) pairs of `python -m flows.train`, with the reusable server running."""
    pairs = []
    with reusable_server(env):
        for index in range(rounds):
            order = (1, 2) if index % 2 == 0 else (2, 1)
            got = {n: run_case("flow", tmp / f"ranks{n}-{index}", env,
                               (*LAUNCH, f"train.distributed.nproc_per_node={n}")) for n in order}
            pairs.append((got[1], got[2]))
            print(f"startup: launch round {index + 1}: 1 rank {got[1].wall:.2f} s, 2 ranks {got[2].wall:.2f} s",
                  file=sys.stderr, flush=True)
    return pairs


# --------------------------------------------------------------------------- the profile


def timeline(case: str, tmp: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds from exec to each mark of one profiled `python -m flows.train` (see benchmarks._timeline)."""
    out, run_dir = tmp / f"timeline-{case}.json", tmp / f"timeline-{case}"
    started = time.time()
    subprocess.run([sys.executable, "-m", "benchmarks._timeline", str(out), "flows.train", "--run-dir", str(run_dir),
                    "--set", "train.progress=false"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    marks = {"exit": time.time(), **json.loads(out.read_text()), **flow_run_times(Path(env["PREFECT_HOME"]))}
    marks["training"] = json.loads((run_dir / "metrics.json").read_text())["training"]["seconds"]
    return {k: (v if k == "training" else v - started) for k, v in marks.items()}


def flow_run_times(home: Path) -> dict[str, float]:
    """The latest flow run's start and end (wall clock) from Prefect's SQLite database; {} where unreadable."""
    try:
        with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
            start, end = db.execute("SELECT start_time, end_time FROM flow_run ORDER BY created DESC LIMIT 1").fetchone()
        return {name: datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()
                for name, value in (("flow_start", start), ("flow_end", end))}
    except Exception:  # another database, another schema: the profile goes without these two marks
        return {}


def import_groups(statement: str, env: dict[str, str]) -> dict[str, float]:
    from benchmarks.orchestration import parse_importtime

    done = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    return parse_importtime(done.stderr)


def profile(tmp: Path, env: dict[str, str]) -> dict[str, dict[str, float]]:
    from benchmarks.orchestration import server_start_stop

    cold = timeline("cold", tmp, env)
    with reusable_server(env):
        running = timeline("running", tmp, env)
    start, stop = server_start_stop(env)
    return {"cold": cold, "running": running, "server": {"start": start, "stop": stop},
            "imports flows.train": import_groups("import flows.train", env),
            "imports plain": import_groups(PLAIN_IMPORTS, env)}


# --------------------------------------------------------------------------- the report


def ratio_rows(pairs: dict[str, list[tuple[Timed, Timed]]]) -> list[str]:
    labels = {"cold": "cold `python -m flows.train` (a temporary server)",
              "running": "`python -m flows.train`, a reusable server running"}
    rows = []
    for case, runs in pairs.items():
        plain, ours = [p for p, _ in runs], [o for _, o in runs]
        ratios = [o.wall / p.wall for p, o in runs]
        ratio, goal = median(ratios), GOALS[case]
        rows += [
            f"| plain script (paired with {case}) | {_cell([p.wall for p in plain])} | {median([p.cpu for p in plain]):.2f} "
            f"| {_cell([p.train for p in plain])} | {median([p.epochs for p in plain]):.0f} |  |  |",
            f"| {labels[case]} | {_cell([o.wall for o in ours])} | {median([o.cpu for o in ours]):.2f} "
            f"| {_cell([o.train for o in ours])} | {median([o.epochs for o in ours]):.0f} "
            f"| **{ratio:.2f}** ({span(ratios)}) | <= {goal}: {'met' if ratio <= goal else 'NOT met'} |",
        ]
    return rows


def launch_rows(pairs: list[tuple[Timed, Timed]]) -> list[str]:
    one = [o.wall - o.train for o, _ in pairs]
    two = [t.wall - t.train for _, t in pairs]
    ratios = [b / a for a, b in zip(one, two)]
    ratio = median(ratios)
    return [
        f"| 1 rank | {_cell([o.wall for o, _ in pairs])} | {_cell([o.train for o, _ in pairs])} | {_cell(one)} |",
        f"| 2 ranks (gloo) | {_cell([t.wall for _, t in pairs])} | {_cell([t.train for _, t in pairs])} | {_cell(two)} |",
        f"| **2-rank start-up / 1-rank start-up** |  |  | **{ratio:.2f}** ({span(ratios)}); "
        f"<= {GOALS['launch']}: {'met' if ratio <= GOALS['launch'] else 'NOT met'} |",
        f"| the launch itself (2-rank start-up - 1-rank start-up) |  |  | {median(two) - median(one):.2f} |",
    ]


STEPS = (  # (label, from mark, to mark): seconds between two marks of a profiled run
    ("interpreter, arguments, config (exec -> server launched)", None, "server_start"),
    ("Prefect's server: launched -> answering", "server_start", "server_healthy"),
    ("imports and data check (exec -> Prefect session)", None, "session"),
    ("imports made while the server starts (session -> waiting)", "session", "waiting"),
    ("waiting for the server (-> it answers)", "waiting", "server_ready"),
    ("flow run created and started (-> flow start)", "server_ready", "flow_start"),
    ("flow run (start -> end)", "flow_start", "flow_end"),
    ("  of which the training loop", None, "training"),
    ("after the flow run (end -> returned)", "flow_end", "flow_returned"),
    ("exit (returned -> process gone)", "flow_returned", "exit"),
    ("**whole command**", None, "exit"),
)


def profile_rows(profiled: dict[str, dict[str, float]]) -> list[str]:
    def step(marks: dict[str, float], start: str | None, end: str) -> str:
        if end not in marks or (start is not None and start not in marks):
            return "-"
        return f"{marks[end] - (marks[start] if start else 0.0):.2f}"

    cold, running = profiled["cold"], profiled["running"]
    return [f"| {label} | {step(cold, a, b)} | {step(running, a, b)} |" for label, a, b in STEPS]


def import_rows(profiled: dict[str, dict[str, float]]) -> list[str]:
    ours, plain = profiled["imports flows.train"], profiled["imports plain"]
    rows = [f"| {group} | {ours[group]:.2f} | {plain.get(group, 0.0):.2f} |" for group in ours]
    return [*rows, f"| **total** | {sum(ours.values()):.2f} | {sum(plain.values()):.2f} |"]


def format_report(pairs: dict[str, list[tuple[Timed, Timed]]], launch: list[tuple[Timed, Timed]],
                  profiled: dict[str, dict[str, float]], rounds: int) -> str:
    server = profiled["server"]
    return "\n".join([
        f"## Start-up: the whole default job against a plain script ({rounds} round(s) of interleaved pairs, "
        "whole processes)",
        "",
        "| case | wall s (min-max) | CPU s | training loop s (min-max) | epochs | **wall / its plain pair** "
        "(per pair) | goal |",
        "|---|---|---:|---|---:|---:|---|",
        *ratio_rows(pairs),
        "",
        f"### Two-rank launch ({len(launch)} round(s); {', '.join(LAUNCH)}; a reusable server running)",
        "",
        "| case | wall s (min-max) | training loop s | start-up s: wall - loop (min-max) |",
        "|---|---|---|---|",
        *launch_rows(launch),
        "",
        "### Where the time goes (one profiled run per case, seconds from exec)",
        "",
        "| step | cold | running server |",
        "|---|---:|---:|",
        *profile_rows(profiled),
        "",
        f"Prefect's server alone (`flows._server.TemporaryServer`, a migrated PREFECT_HOME): "
        f"{server['start']:.2f} s until it answers, {server['stop']:.2f} s to stop.",
        "",
        "Imports, `-X importtime` self time by group (seconds; `-X importtime` slows imports a little):",
        "",
        "| group | `import flows.train` | the plain script's imports |",
        "|---|---:|---:|",
        *import_rows(profiled),
        "",
    ])


def _cell(values: list[float]) -> str:
    return f"{median(values):.2f} ({span(values)})"


def run_benchmark(rounds: int, launch_rounds: int) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        tmp = Path(name)
        env = environment(tmp)
        print("startup: first run on a new PREFECT_HOME (migrations, device cache), untimed", file=sys.stderr, flush=True)
        run_case("flow", tmp / "warm-up", env)
        pairs = measure_pairs(rounds, tmp, env)
        launch = measure_launch(launch_rounds, tmp, env)
        print("startup: profile", file=sys.stderr, flush=True)
        profiled = profile(tmp, env)
    return format_report(pairs, launch, profiled, rounds)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of pairs, 1 of the launch")
    parser.add_argument("--rounds", type=int, help="rounds of pairs (default 5; quick 1)")
    parser.add_argument("--launch-rounds", type=int, help="rounds of the two-rank launch (default 3; quick 1)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    for name in ("rounds", "launch_rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    report = run_benchmark(args.rounds or (1 if args.quick else 5), args.launch_rounds or (1 if args.quick else 3))
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
