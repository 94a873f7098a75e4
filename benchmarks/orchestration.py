"""Orchestration overhead: what Prefect adds to a cold `python -m flows.train`.

    python -m benchmarks.orchestration                  # 3 rounds, 50 no-op tasks
    python -m benchmarks.orchestration --quick          # 1 round, 20 no-op tasks
    python -m benchmarks.orchestration --rounds 5 --tasks 100 --output out.md

Cases, each a fresh process, the order rotating from round to round (F R P, R P F, ...):

  F flow      a cold `python -m flows.train` on the default config (the
              Prefect flow: temporary server, task runs, artifacts), via
              `benchmarks.device_selection.cold_run`; its training time is
              read from metrics.json.
  R running   the same cold `python -m flows.train`, with PREFECT_API_URL
              pointing at a server that is already running (the reusable
              server of `python -m flows.server start`, the setup for
              repeated runs, started by the benchmark before the run and
              stopped after it, outside the timing).
  P plain     the same recipe with plain stages, without Prefect, in a fresh
              process (`python -m benchmarks.orchestration --plain-run DIR`):
              device, data, model, train (with checkpoints), evaluate, bundle,
              metrics, plots and report.md, as the flow does them; only the
              Prefect artifacts are missing.

Prefect's share of the cold run is its time outside training minus P's,
over F's wall time: ((F - F's training) - (P - P's training)) / F, with the
medians (target: at most 20%). Training is the same work in both, but on a
loaded machine its time swings by several times from run to run (torch's
threads wait on each other when another process holds a core), which would
drown the difference; the plain (F - P) / F is reported beside it, and so is
each case's training time, so a slowdown of training inside the flow shows.
Its parts, each measured on its own in a fresh process:

  - import time (`python -X importtime -c "import flows.train"`), the time
    of each module charged to the nearest enclosing import among prefect,
    torch, sklearn, pandas, matplotlib, our packages (flows, tasks,
    schemas), and the rest;
  - the temporary server: `flows._server.TemporaryServer` start (until
    /health answers) and stop (until it has exited), on the benchmark's
    already-migrated PREFECT_HOME;
  - per-task overhead: in one process, against a temporary server, with the
    Prefect settings of `python -m flows.train` (`flows._cli.prefect_session`), a flow
    calling N no-op tasks against the same flow calling none, interleaved;
    (difference / N) in ms, beside N plain calls. The empty flow's own time
    is the fixed cost of one flow call.

All subprocesses share a temporary PREFECT_HOME; the first flow run on it (DB
migrations) is a warm-up, timed and reported but not counted. Peak memory:
the peak RSS (ru_maxrss) of each case's process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from benchmarks._common import emit_report, median, reusable_server, span, timed_stages

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.20  # Prefect's share of a cold run, at most
IMPORT_GROUPS = ("prefect", "torch", "sklearn", "pandas", "matplotlib", "project")
PROJECT_PACKAGES = ("flows", "tasks", "schemas", "benchmarks")
QUIET = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


@dataclass
class Result:
    flow_wall: list[float] = field(default_factory=list)
    flow_train: list[float] = field(default_factory=list)
    running_wall: list[float] = field(default_factory=list)
    running_train: list[float] = field(default_factory=list)
    plain_wall: list[float] = field(default_factory=list)
    plain_train: list[float] = field(default_factory=list)
    plain_stages: list[dict[str, float]] = field(default_factory=list)
    first_run_wall: float = 0.0  # on a new PREFECT_HOME: migrations
    interpreter: list[float] = field(default_factory=list)
    imports: list[dict[str, float]] = field(default_factory=list)
    server_start: list[float] = field(default_factory=list)
    server_stop: list[float] = field(default_factory=list)
    per_task: dict[str, float] = field(default_factory=dict)
    n_tasks: int = 0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    @property
    def flow_outside_training(self) -> list[float]:
        return [w - t for w, t in zip(self.flow_wall, self.flow_train)]

    @property
    def plain_outside_training(self) -> list[float]:
        return [w - t for w, t in zip(self.plain_wall, self.plain_train)]

    @property
    def prefect_share(self) -> float:
        """The headline: Prefect's time outside training over the cold run's wall time."""
        return (median(self.flow_outside_training) - median(self.plain_outside_training)) / median(self.flow_wall)

    @property
    def running_share(self) -> float:
        """The same share for case R, against a running server."""
        outside = median([w - t for w, t in zip(self.running_wall, self.running_train)])
        return (outside - median(self.plain_outside_training)) / median(self.running_wall)

    @property
    def raw_share(self) -> float:
        return (median(self.flow_wall) - median(self.plain_wall)) / median(self.flow_wall)

    @property
    def round_shares(self) -> list[float]:
        return [
            (fo - po) / f for fo, po, f in zip(self.flow_outside_training, self.plain_outside_training, self.flow_wall)
        ]


# --------------------------------------------------------------------------- subprocess helpers


def _env(prefect_home: Path) -> dict[str, str]:
    env = {**os.environ, **QUIET, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)  # the cold run is the no-setup case: a temporary server
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _python(args: list[str], env: dict[str, str], peaks: dict[str, float] | None = None, label: str = "") -> tuple[float, str]:
    """(wall seconds, stdout) of `python ARGS` in a fresh process; its peak RSS goes into peaks[label]."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({process.returncode}):\n{stderr[-3000:]}")
    if peaks is not None:
        peaks[label] = max(peaks.get(label, 0.0), usage.ru_maxrss / 1024)
    return wall, stdout


def _children_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def flow_run(directory: Path, env: dict[str, str]) -> tuple[float, float]:
    """Case F: (wall, training seconds) of a cold `python -m flows.train`, reusing device_selection's cold_run."""
    from benchmarks import device_selection

    with _environment(env):  # cold_run passes this process's environment on
        return device_selection.cold_run(directory)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """This process's environment replaced by `env` for the block (subprocesses started in it inherit it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def running_server(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A Prefect server kept running on `env`'s PREFECT_HOME (`python -m flows.server start`, the user's way);
    yields an environment whose PREFECT_API_URL points at it."""
    with reusable_server(env) as api_url:
        yield {**env, "PREFECT_API_URL": api_url}


def plain_run(
    directory: Path, env: dict[str, str], peaks: dict[str, float] | None = None
) -> tuple[float, float, dict[str, float]]:
    """Case P: (wall, training seconds, seconds per stage) of the stages without Prefect, in a fresh process."""
    wall, out = _python(["-m", "benchmarks.orchestration", "--plain-run", str(directory)], env, peaks, "P plain")
    stages = json.loads(out.strip().splitlines()[-1])
    return wall, stages["train"], stages


def run_plain_stages(directory: Path, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """The flow's recipe with plain stages (no Prefect), each stage timed; run by `--plain-run` in a fresh process."""
    started = time.perf_counter()
    from schemas.loading import load_config
    from tasks.common.callbacks import LambdaCallback
    from tasks.recipe import run_recipe
    from tasks.run.outputs import HistoryCsv, RunFolder, record_config
    from tasks.run.rundir import create_run_dir, run_lifecycle
    from tasks.run.tracking import check_tracking, start_tracking

    times = {"import": time.perf_counter() - started}
    stages = timed_stages(times, select_device="device", prepare_data="data", build_model="model",
                          train_model="train", evaluate_model="evaluate", save_model="save")
    config = load_config(None, ["train.progress=false", *overrides])
    check_tracking(config.tracking)
    path = create_run_dir(str(directory), config.name)
    record_config(path, config)
    with run_lifecycle(path):
        tracking = start_tracking(config, path)
        clock = LambdaCallback(on_run_end=lambda run: times.update(record=time.perf_counter()))  # the records start
        callbacks = [clock, RunFolder(path, tracking), HistoryCsv(path), *tracking.loggers]
        run = run_recipe(config, path, callbacks, stages=stages)
        times["record"] = time.perf_counter() - times["record"]  # metrics.json, history, plots, report.md, trackers
    times["train_inside"] = run.train.seconds
    times["total_in_process"] = time.perf_counter() - started
    return times


def interpreter_start(env: dict[str, str]) -> float:
    return _python(["-c", "pass"], env)[0]


def import_breakdown(env: dict[str, str]) -> dict[str, float]:
    """Seconds of `import flows.train` charged to each group (see IMPORT_GROUPS), from -X importtime."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import flows.train"], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True,
    )
    wall = time.perf_counter() - started
    groups = parse_importtime(done.stderr)
    groups["wall of the import process"] = wall
    return groups


def parse_importtime(text: str) -> dict[str, float]:
    """Self time per group: each module goes to its nearest enclosing import (itself first) that names a group.

    -X importtime prints a module after the modules it imported, each line
    `import time: self | cumulative | <indent>name`; deeper indentation is nested.
    """
    totals = {group: 0.0 for group in (*IMPORT_GROUPS, "other")}
    open_nodes: list[tuple[int, tuple[str, float, list]]] = []  # (depth, (name, self seconds, children))
    for line in text.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        depth = len(match[3]) // 2
        children = [node for d, node in open_nodes if d > depth]
        open_nodes = [(d, node) for d, node in open_nodes if d <= depth]
        open_nodes.append((depth, (match[4], int(match[1]) / 1e6, children)))

    def charge(node: tuple[str, float, list], inherited: str | None) -> None:
        name, self_s, children = node
        group = _group(name) or inherited
        totals[group or "other"] += self_s
        for child in children:
            charge(child, group)

    for _, node in open_nodes:
        charge(node, None)
    return totals


def _group(module: str) -> str | None:
    top = module.split(".")[0]
    if top in PROJECT_PACKAGES:
        return "project"
    return top if top in IMPORT_GROUPS else None


SERVER_SCRIPT = """
import json, time
from flows._server import TemporaryServer
server = TemporaryServer()
t = time.perf_counter(); server.start(); server.wait_until_healthy(300); start = time.perf_counter() - t
t = time.perf_counter(); server.stop(); server.server.process.wait(); stop = time.perf_counter() - t
print(json.dumps({"start": start, "stop": stop}))
"""


def server_start_stop(env: dict[str, str]) -> tuple[float, float]:
    """(start, stop) seconds of Prefect's temporary server, measured in a fresh process."""
    _, out = _python(["-c", SERVER_SCRIPT], env)
    values = json.loads(out.strip().splitlines()[-1])
    return values["start"], values["stop"]


def per_task_overhead(n_tasks: int, rounds: int, env: dict[str, str]) -> dict[str, float]:
    """Run `--per-task N ROUNDS` in a fresh process (it starts its own temporary server)."""
    _, out = _python(["-m", "benchmarks.orchestration", "--per-task", str(n_tasks), str(rounds)], env)
    return json.loads(out.strip().splitlines()[-1])


def measure_per_task(n_tasks: int, rounds: int) -> dict[str, float]:
    """In this process: ms per no-op task run (flow with N tasks minus an empty flow, over N), per plain call,
    and the empty flow call's own time. The first flow call (server start) is a warm-up."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    def noop(i: int) -> int:
        return i

    noop_task = task(noop, name="noop", cache_policy=NO_CACHE)

    @flow(name="bench-empty")
    def empty() -> None:
        return None

    @flow(name="bench-tasks")
    def many(n: int) -> None:
        for i in range(n):
            noop_task(i)

    empty()  # starts the temporary server
    many(1)
    empties, fulls = [], []
    for index in range(rounds):
        for case in (("E", "T") if index % 2 == 0 else ("T", "E")):
            start = time.perf_counter()
            empty() if case == "E" else many(n_tasks)
            (empties if case == "E" else fulls).append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n_tasks):
        noop(i)
    plain = time.perf_counter() - start
    per_round = [(f - e) / n_tasks * 1000 for f, e in zip(fulls, empties)]
    return {
        "task_ms": statistics.median(per_round),
        "task_ms_min": min(per_round),
        "task_ms_max": max(per_round),
        "plain_call_ms": plain / n_tasks * 1000,
        "empty_flow_s": statistics.median(empties),
        "flow_with_tasks_s": statistics.median(fulls),
    }


# --------------------------------------------------------------------------- running and reporting


def run_benchmark(rounds: int, n_tasks: int, task_rounds: int) -> Result:
    result = Result(n_tasks=n_tasks)
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        folder = Path(tmp)
        env = _env(folder / "prefect-home")
        print("orchestration: first flow run on a new PREFECT_HOME (warm-up)", file=sys.stderr, flush=True)
        result.first_run_wall, _ = flow_run(folder / "warm-up", env)
        # cold_run gives no per-process usage; only flow runs have ended so far, so this is the flow's peak.
        result.peak_rss_mib["F flow"] = _children_peak_mib()
        _python(["-c", "import flows.train"], env)  # warm the file cache for the plain case too
        for index in range(1, rounds + 1):
            print(f"orchestration: round {index}/{rounds}", file=sys.stderr, flush=True)
            order = ("F", "R", "P")[(index - 1) % 3 :] + ("F", "R", "P")[: (index - 1) % 3]
            for case in order:
                if case == "F":
                    wall, train = flow_run(folder / f"flow-{index}", env)
                    result.flow_wall.append(wall)
                    result.flow_train.append(train)
                elif case == "R":
                    # Started for this case only, so that it does not share the cores with the others.
                    with running_server(env) as running_env:
                        wall, train = flow_run(folder / f"running-{index}", running_env)
                    result.running_wall.append(wall)
                    result.running_train.append(train)
                else:
                    wall, train, stages = plain_run(folder / f"plain-{index}", env, result.peak_rss_mib)
                    result.plain_wall.append(wall)
                    result.plain_train.append(train)
                    result.plain_stages.append(stages)
            result.interpreter.append(interpreter_start(env))
            result.imports.append(import_breakdown(env))
            start, stop = server_start_stop(env)
            result.server_start.append(start)
            result.server_stop.append(stop)
        print("orchestration: per-task overhead", file=sys.stderr, flush=True)
        result.per_task = per_task_overhead(n_tasks, task_rounds, env)
    return result


def format_report(result: Result) -> str:
    from tasks.device import available_cores

    f_wall, p_wall = median(result.flow_wall), median(result.plain_wall)
    f_train = median(result.flow_train)
    share = result.prefect_share
    imports = {k: median([i[k] for i in result.imports]) for k in result.imports[0]}
    stages = {k: median([s[k] for s in result.plain_stages]) for k in result.plain_stages[0]}
    start, stop = median(result.server_start), median(result.server_stop)
    pt = result.per_task
    rounds = len(result.flow_wall)
    lines = [
        f"## Orchestration overhead ({available_cores()} cores, {rounds} round(s), cold processes, "
        "order rotating F R P, R P F, ...)",
        "",
        "| case | median wall s | min-max s | training inside, s (min-max) | outside training, s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| F cold `python -m flows.train` (default config) | {f_wall:.2f} | {span(result.flow_wall)} "
        f"| {f_train:.2f} ({span(result.flow_train)}) | {median(result.flow_outside_training):.2f} "
        f"| {result.peak_rss_mib.get('F flow', 0):,.0f} |",
        f"| P the same recipe, plain stages, no Prefect, fresh process | {p_wall:.2f} | {span(result.plain_wall)} "
        f"| {median(result.plain_train):.2f} ({span(result.plain_train)}) | {median(result.plain_outside_training):.2f} "
        f"| {result.peak_rss_mib.get('P plain', 0):,.0f} |",
        f"| R the same cold run, PREFECT_API_URL set to a running server | {median(result.running_wall):.2f} "
        f"| {span(result.running_wall)} | {median(result.running_train):.2f} ({span(result.running_train)}) "
        f"| {median([w - t for w, t in zip(result.running_wall, result.running_train)]):.2f} |  |",
        f"| first flow run on a new PREFECT_HOME (DB migrations), not counted | {result.first_run_wall:.2f} |  |  |  |  |",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| **Prefect's share of the cold run, (F - P) / F** (target <= {TARGET:.0%}) | **{share:.1%}** "
        f"({'met' if share <= TARGET else 'NOT met'}; rounds: {', '.join(f'{s:.0%}' for s in result.round_shares)}) |",
        f"| **the same share with a running server, (R - P) / R** | **{result.running_share:.1%}** "
        f"({'met' if result.running_share <= TARGET else 'NOT met'}) |",
        f"| training's share of the cold run | {f_train / f_wall:.1%} |",
        f"| (F - P) / F, training included | {result.raw_share:.1%} |",
        f"| F - P outside training | {median(result.flow_outside_training) - median(result.plain_outside_training):.2f} s |",
        f"| of which temporary server start (until healthy) | {start:.2f} s ({span(result.server_start)}) |",
        f"| of which temporary server stop | {stop:.2f} s |",
        f"| of which one flow call, empty (fixed per flow run) | {pt['empty_flow_s']:.2f} s |",
        f"| **per-task overhead** ({result.n_tasks} no-op task runs vs none, in-process, temporary server) "
        f"| **{pt['task_ms']:.1f} ms** ({pt['task_ms_min']:.1f}-{pt['task_ms_max']:.1f}) |",
        f"| a plain call of the same function | {pt['plain_call_ms'] * 1000:.2f} us |",
        f"| interpreter start (`python -c pass`) | {median(result.interpreter):.2f} s |",
        "",
        "Import of `flows.train` in a fresh process (`-X importtime` self time, each module charged to its nearest "
        "enclosing import among these groups; `-X importtime` itself slows imports a little):",
        "",
        "| group | seconds |",
        "|---|---:|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in imports.items()),
        "",
        "Stages of P, in its process (s): "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items() if name != "train_inside"),
        "",
        "Peak RSS: of each process, in the table above (F: the first flow run's; the temporary server, "
        "a child of F, is not included).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Result | None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.orchestration", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds of F and P (default 3; 1 with --quick)")
    parser.add_argument("--tasks", type=int, help="no-op tasks per flow for the per-task cost (default 50; 20 with --quick)")
    parser.add_argument("--quick", action="store_true", help="1 round, 20 no-op tasks")
    parser.add_argument("--output", type=Path, help="also write the markdown report to this file")
    parser.add_argument("--plain-run", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--per-task", type=int, nargs=2, metavar=("N", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_run is not None:  # case P's child process; it exits as `python -m flows.train` does
        from flows._cli import exit_quickly

        print(json.dumps(run_plain_stages(args.plain_run)), flush=True)
        exit_quickly(0)
    if args.per_task is not None:  # the per-task child process, with the settings `python -m flows.train` uses
        from flows._cli import prefect_session

        with prefect_session(debug=False):
            print(json.dumps(measure_per_task(*args.per_task)))
        return None
    for name in ("rounds", "tasks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    rounds = args.rounds or (1 if args.quick else 3)
    n_tasks = args.tasks or (20 if args.quick else 50)
    result = run_benchmark(rounds, n_tasks, task_rounds=3 if args.quick else 5)
    report = format_report(result)
    emit_report(report, args.output)
    return result


if __name__ == "__main__":
    main()
