"""Data-parallel training (train.distributed): 2 ranks x 1 thread against 1 process x 2 threads, and GPUs.

    python -m benchmarks.distributed_training                  # digits MLP and CNN, 10 epochs, 3 rounds
    python -m benchmarks.distributed_training --quick          # digits MLP, 3 epochs, 1 round
    python -m benchmarks.distributed_training --rounds 5 --epochs 20 --output out.md

Cases, on the same config, seed and global batch (early stopping off, no checkpoints), through
`tasks.train.train_model`:

  P   one process, 2 torch threads (`train.distributed.nproc_per_node=1`).
  P1  one process, 1 torch thread: tells the ranks' parallelism apart from 2 threads' oversubscription on
      a busy machine.
  R   2 ranks of 1 thread each (`nproc_per_node=2`, gloo), started by torch's elastic launcher.

Two rates per case: **loop** samples/s, the training loop's own (train rows x epochs over the loop's
time, validation included; for R, rank 0's loop, after the ranks have started), and **wall**
samples/s, over the whole call (for R: spawning 2 processes, importing torch and the pipeline in
each, the rendezvous, then the loop). R/P and R/P1 compare them. The order of the cases rotates.

GPU section: with 2 or more CUDA devices, the digits CNN and a larger ResNet on 1 GPU against all
GPUs (one rank each, nccl): samples/s and scaling efficiency (rate on N GPUs / (N x rate on 1)).
Without them the section says "not measured".
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import emit_report, span
from schemas.loading import load_config
from schemas.recipe import ModelSetup
from tasks.data import prepare_data
from tasks.model import build_model
from tasks.train import train_model

BASE = ("train.progress=false", "train.early_stopping.enabled=false", "train.checkpoint.enabled=false")
WORKLOADS = {"digits-mlp": (), "digits-cnn": ("model.kind=cnn",)}
GPU_WORKLOADS = {
    "digits-cnn": ("model.kind=cnn",),
    "digits-resnet": ("model.kind=resnet", "model.channels=[64,128,256]", "model.blocks_per_stage=2"),
}


@dataclass(frozen=True)
class Run:
    loop_rate: float  # samples/s inside the training loop
    wall_rate: float  # samples/s over the whole call, launching included
    val_loss: float


def run_case(overrides: tuple[str, ...], epochs: int, nproc: str, device: str = "cpu", threads: int = 2) -> Run:
    """One training call: `nproc` ranks (a number or auto) on `device`, the parent holding `threads` threads."""
    config = load_config(None, [*BASE, *overrides, f"device={device}", f"train.epochs={epochs}",
                                f"train.distributed.nproc_per_node={nproc}"])
    torch.set_num_threads(threads)  # the ranks get threads // ranks each
    data = prepare_data(config.data, seed=config.seed)
    parts = build_model(ModelSetup.of(config), data.spec, torch.device(device))
    started = time.perf_counter()
    result = train_model(parts, data, config.train, torch.device(device), config.seed)
    wall = time.perf_counter() - started
    return Run(result.samples_per_second, len(data.X_train) * result.epochs_run / wall, result.history[-1].val_loss)


def cpu_rows(epochs: int, rounds: int, names: list[str]) -> list[str]:
    rows = []
    for name in names:
        cases = ["P", "P1", "R"]
        runs: dict[str, list[Run]] = {c: [] for c in cases}
        for round_ in range(rounds):
            for case in cases[round_ % 3:] + cases[: round_ % 3]:
                nproc, threads = ("2", 2) if case == "R" else ("1", 2 if case == "P" else 1)
                runs[case].append(run_case(WORKLOADS[name], epochs, nproc, threads=threads))
        loop = {c: [r.loop_rate for r in runs[c]] for c in runs}
        wall = {c: [r.wall_rate for r in runs[c]] for c in runs}
        labels = (("P", "1 process x 2 threads"), ("P1", "1 process x 1 thread"), ("R", "2 ranks x 1 thread (gloo)"))
        for case, label in labels:
            rows.append(
                f"| {name} | {label} | {statistics.median(loop[case]):,.0f} ({span(loop[case], '{:,.0f}')}) "
                f"| {statistics.median(wall[case]):,.0f} ({span(wall[case], '{:,.0f}')}) "
                f"| {runs[case][-1].val_loss:.4f} |"
            )
        for base in ("P", "P1"):
            rows.append(
                f"| {name} | **R/{base}** | **{statistics.median(loop['R']) / statistics.median(loop[base]):.2f}x** "
                f"| **{statistics.median(wall['R']) / statistics.median(wall[base]):.2f}x** | |"
            )
    return rows


def gpu_section(epochs: int) -> list[str]:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return ["### GPUs", "", f"Not measured: {gpus} CUDA device(s) here (no GPU machine lent); it needs 2 or more.", ""]
    lines = ["### GPUs", "", "| workload | 1 GPU samples/s | all GPUs samples/s | scaling efficiency |", "|---|---|---|---|"]
    for name, overrides in GPU_WORKLOADS.items():
        one = run_case(overrides, epochs, "1", device="cuda")
        every = run_case(overrides, epochs, "auto", device="cuda")
        lines.append(f"| {name} | {one.loop_rate:,.0f} | {every.loop_rate:,.0f} ({gpus} GPUs) "
                     f"| {every.loop_rate / (gpus * one.loop_rate):.0%} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed_training", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits MLP only, 3 epochs, 1 round")
    parser.add_argument("--rounds", type=int, help="timed rounds per case (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 10; quick 3)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    epochs = args.epochs or (3 if args.quick else 10)
    names = ["digits-mlp"] if args.quick else list(WORKLOADS)
    report = "\n".join([
        f"## Distributed training (2 CPU processes, gloo; {epochs} epochs, {rounds} round(s), case order rotating)",
        "",
        "Median samples/s (min-max). Loop: inside the training loop (rank 0's for the ranks). Wall: the whole "
        "call, for the ranks spawning and importing included.",
        "",
        "| workload | case | loop samples/s | wall samples/s | last val_loss |",
        "|---|---|---|---|---|",
        *cpu_rows(epochs, rounds, names),
        "",
        *gpu_section(epochs),
    ])
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
