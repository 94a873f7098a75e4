"""GPU check: every CUDA path of the pipeline, through its own stage functions, as one table.

    python -m benchmarks.gpu_check                     # on a machine with CUDA: a few minutes on one GPU
    python -m benchmarks.gpu_check --output gpu.md     # also write the table to a file
    python -m benchmarks.gpu_check --device cpu        # rehearse the same checks on the CPU (for tests)

Without CUDA it says so and exits 0. Otherwise it prints a table with one row
per check, each run through `tasks.device`, `tasks.data`, `tasks.model` and
`tasks.train` as a run calls them, on digits (8x8 images, 1,257 training rows):

  device auto, MLP    the default MLP (batch 64): measured ms/step per device and the decision (expected: cpu)
  device auto, CNN    a wider CNN (channels 128 and 256, batch 512): the same (expected: cuda)
  precision           the CNN trained with fp32, bf16 and fp16 autocast (fp16 with a GradScaler): samples/s,
                      finite losses, the precision the result records
  fused optimizer     the optimizer `build_model` makes on the GPU (Adam, fused=True) against torch's
                      foreach implementation: ms per optimizer step
  data on device      data_on_device always (the split copied once) against never (pinned batches,
                      non_blocking copies): samples/s and the placement the result records
  resume              the MLP, 6 epochs, interrupted after epoch 3 and resumed from its checkpoint,
                      against an uninterrupted run: bit-identical weights and history
                      (torch.use_deterministic_algorithms on for this check)
  NCCL, 1 rank        the MLP trained by the elastic launcher in one rank on nccl; with 2 or more GPUs
  NCCL, N ranks       also in one rank per GPU; the validation losses against the plain loop's
  throughput          the CNN, 20 epochs, data on the device: `train_model` against a hand-written loop
                      (same model, initial weights and optimizer): samples/s and their ratio

Status per row: ok; differs (ran, but not as expected: a finding to read); skipped (this GPU or
torch lacks the feature); FAILED (an error, or a wrong result). The exit code is 1 when a row
FAILED. CUBLAS_WORKSPACE_CONFIG is set to ":4096:8" (unless set) before CUDA starts, which
deterministic cuBLAS needs for the resume check.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MLP = ("train.progress=false",)
CNN = ("train.progress=false", "model.kind=cnn", "model.channels=[128,256]", "model.hidden=256", "train.batch_size=512")
SMALL_CNN = ("train.progress=false", "model.kind=cnn", "model.channels=[8,16]", "model.hidden=32")  # rehearsing
FIXED = ("train.early_stopping.enabled=false", "train.checkpoint.enabled=false")


@dataclass(frozen=True)
class Row:
    check: str
    expected: str
    result: str
    status: str  # ok, differs, skipped, FAILED
    seconds: float = 0.0


@dataclass
class Context:
    device: str  # "cuda" or, rehearsing, "cpu"
    tmp: Path
    gpus: int

    @property
    def cnn(self) -> tuple[str, ...]:
        """The CNN workload: wide enough for a GPU to win; a small one when rehearsing on the CPU."""
        return CNN if self.device == "cuda" else SMALL_CNN

    def epochs(self, n: int) -> str:
        return f"train.epochs={n if self.device == 'cuda' else min(n, 2)}"

    def config(self, *overrides: str, device: str | None = None):
        from schemas.loading import load_config

        return load_config(None, [*overrides, f"device={device or self.device}",
                                  f"device.cache_dir={self.tmp / 'device-cache'}"])


# --------------------------------------------------------------------------- helpers on the project's stages


def prepare(config):
    """The data and fresh training parts on the config's device, as a run builds them (the stages' own functions)."""
    import torch

    from schemas.recipe import ModelSetup
    from tasks.data import prepare_data
    from tasks.model import build_model

    data = prepare_data(config.data, config.seed)
    device = torch.device(config.device.name if config.device.name != "auto" else "cpu")
    parts = build_model(ModelSetup.of(config), data.spec, device)
    return data, parts


def plan(config):
    """The device stage's decision for `config` (a DeviceInfo: device, threads, precision, data placement)."""
    from tasks.data import probe_workload
    from tasks.device import select_device

    return select_device(config.device, probe_workload(config))


def train(config, info, checkpoint_dir: Path | None = None, callbacks=()):
    from tasks.train import train_model

    data, parts = prepare(config)
    return train_model(parts, data, config.train, info, config.seed, checkpoint_dir, callbacks=list(callbacks)), parts


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the checks


def check_auto(ctx: Context, name: str, overrides: tuple[str, ...], expected: str) -> Row:
    """device=auto, measured afresh: the decision and every candidate's ms per step."""
    info = plan(ctx.config(*overrides, "device.remeasure=true", device="auto"))
    steps = ", ".join(f"{c.device} {c.ms_per_step:.3g} ms/step" if c.ms_per_step is not None else f"{c.device} failed"
                      for c in info.candidates) or "nothing to measure"
    want = expected if ctx.device == "cuda" else "cpu"
    return Row(f"device auto, {name}", want, f"{info.device} ({steps}; {info.threads} CPU threads)",
               "ok" if info.device.startswith(want) else "differs")


def check_precision(ctx: Context) -> Row:
    """The CNN with fp32, bf16 and fp16 autocast: samples/s, finite losses, the precision recorded."""
    from schemas.errors import ConfigError

    cells, status = [], "ok"
    for precision in ("fp32", "bf16", "fp16"):
        config = ctx.config(*ctx.cnn, *FIXED, ctx.epochs(5), f"device.precision={precision}")
        try:
            info = plan(config)
            result, _ = train(config, info)
        except ConfigError as exc:  # not on this device: named by the pipeline itself
            cells.append(f"{precision}: skipped ({exc})")
            status = "skipped" if status == "ok" else status
            continue
        losses = [r.train_loss for r in result.history] + [r.val_loss for r in result.history]
        finite = all(math.isfinite(v) for v in losses)
        cells.append(f"{precision}: {result.samples_per_second:,.0f} samples/s, val_loss {result.history[-1].val_loss:.3f}"
                     + ("" if finite else " NOT FINITE") + ("" if result.precision == precision else f" (ran {result.precision})"))
        if not finite or result.precision != precision:
            status = "FAILED"
    return Row("precision (CNN)", "all finite; each precision recorded", "; ".join(cells), status)


def check_fused(ctx: Context) -> Row:
    """The library's optimizer on the device (fused) against torch's foreach update: ms per step."""
    import torch

    from tasks.nets.optim import build_optimizer

    config = ctx.config(*ctx.cnn, *FIXED)
    data, parts = prepare(config)
    fused = bool(parts.optimizer.defaults.get("fused"))
    x = data.X_train[: config.train.batch_size].to(ctx.device)
    y = data.y_train[: config.train.batch_size].to(ctx.device)

    def ms_per_step(optimizer: torch.optim.Optimizer, steps: int = 30) -> float:
        for i in range(steps + 5):  # 5 warm-up steps
            if i == 5:
                sync(ctx.device)
                start = time.perf_counter()
            optimizer.zero_grad()
            parts.loss_fn(parts.model(x), y).backward()
            optimizer.step()
        sync(ctx.device)
        return (time.perf_counter() - start) / steps * 1000

    library = ms_per_step(parts.optimizer)
    foreach = ms_per_step(build_optimizer(config.optimizer, parts.model.parameters(), fused=False))
    return Row("fused optimizer (CNN)", "fused=True on cuda", f"fused={fused}: {library:.3g} ms/step; "
               f"foreach: {foreach:.3g} ms/step", "ok" if fused or ctx.device != "cuda" else "differs")


def check_data_on_device(ctx: Context) -> Row:
    cells, placements = [], {}
    for mode in ("always", "never"):
        config = ctx.config(*ctx.cnn, *FIXED, ctx.epochs(5), f"device.data_on_device={mode}")
        result, _ = train(config, plan(config))
        placements[mode] = result.data_placement
        cells.append(f"{mode}: {result.data_placement}, {result.samples_per_second:,.0f} samples/s")
    want = {"always": "device", "never": "host"}
    status = "ok" if placements == want or ctx.device != "cuda" else "FAILED"
    return Row("data on device (CNN)", "always -> device, never -> host", "; ".join(cells), status)


class _Interrupted(Exception):
    pass


def _stop_after(epoch: int):
    """A callback that interrupts training at the end of epoch `epoch` (before its checkpoint)."""
    from tasks.common.callbacks import LambdaCallback

    def on_epoch_end(record) -> None:
        if record.epoch == epoch:
            raise _Interrupted(f"interrupted at epoch {record.epoch}")

    return LambdaCallback(on_epoch_end=on_epoch_end)


def check_resume(ctx: Context) -> Row:
    """Interrupted after epoch 3 of 6 and resumed from the checkpoint, against an uninterrupted run: bit for bit."""
    import torch

    config = ctx.config(*MLP, "train.epochs=6", "train.early_stopping.enabled=false", "model.dropout=0.3")
    info = plan(config)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns; the
    # comparison below then says whether it mattered
    try:
        whole, whole_parts = train(config, info, ctx.tmp / "resume-whole")
        try:
            train(config, info, ctx.tmp / "resume-cut", callbacks=[_stop_after(4)])
        except _Interrupted:
            pass
        resumed, resumed_parts = train(config, info, ctx.tmp / "resume-cut")
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    a, b = whole_parts.model.state_dict(), resumed_parts.model.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [r.model_dump(exclude={"seconds"}) for r in whole.history] == [
        r.model_dump(exclude={"seconds"}) for r in resumed.history]
    return Row("resume on the device (MLP, cut after epoch 3)", "bit-identical weights and history",
               f"resumed from epoch {resumed.resumed_from_epoch}; weights {'identical' if same else 'DIFFER'}; "
               f"history {'identical' if history else 'DIFFERS'}", "ok" if same and history else "FAILED")


def check_ranks(ctx: Context) -> Row:
    """The MLP in one launched rank (nccl on cuda, gloo rehearsing), and in one rank per GPU with 2 or more."""
    from tasks.train import train_on_rank
    from tasks.train._distributed import backend_for, train_distributed  # one rank: train_model would not launch

    base = (*MLP, *FIXED, "train.epochs=3", "model.dropout=0")
    plain_config = ctx.config(*base)
    info = plan(plain_config)
    plain, _ = train(plain_config, info)
    config = ctx.config(*base, "train.distributed.nproc_per_node=1")
    data, parts = prepare(config)
    one = train_distributed(train_on_rank, parts, data, config.train, info, config.seed, None, [])
    backend = backend_for(config.train.distributed, info.torch_device)
    cells = [f"1 rank on {backend}: val_loss {one.history[-1].val_loss:.4f} (plain loop {plain.history[-1].val_loss:.4f})"]
    close = math.isclose(one.history[-1].val_loss, plain.history[-1].val_loss, rel_tol=1e-3)
    if ctx.gpus >= 2:
        config = ctx.config(*base, f"train.distributed.nproc_per_node={ctx.gpus}")
        many, _ = train(config, plan(config))
        cells.append(f"{many.ranks} ranks: val_loss {many.history[-1].val_loss:.4f}")
    else:
        cells.append("more ranks: skipped (one GPU)" if ctx.device == "cuda" else "more ranks: not rehearsed")
    return Row("distributed (MLP)", "1 rank matches the plain loop", "; ".join(cells),
               "ok" if close and one.ranks == 1 else "FAILED")


def check_throughput(ctx: Context) -> Row:
    """`train_model` against a hand-written loop on the same model, weights, optimizer and device-resident data."""
    import torch

    config = ctx.config(*ctx.cnn, *FIXED, ctx.epochs(20), "train.restore_best=false", "device.data_on_device=always")
    info = plan(config)
    library, _ = train(config, info)
    data, parts = prepare(config)
    from tasks.train import batch_size_for

    batch, _ = batch_size_for(config.train, None, len(data.X_train))  # the batch train_model trains with
    hand = hand_loop(parts, data, config.train.epochs, batch, ctx.device, config.seed)
    ratio = library.samples_per_second / hand
    return Row("throughput (CNN)", "train_model >= 0.9x a hand loop",
               f"train_model {library.samples_per_second:,.0f}, hand loop {hand:,.0f} samples/s: {ratio:.2f}x",
               "ok" if ratio >= 0.9 else "differs")


def hand_loop(parts, data, epochs: int, batch_size: int, device: str, seed: int) -> float:
    """Samples/s of the plain loop a course teaches, validating each epoch; data moved to the device once."""
    import torch

    X, y = data.X_train.to(device), data.y_train.to(device)
    X_val, y_val = data.X_val.to(device), data.y_val.to(device)
    model, loss_fn, optimizer = parts.model, parts.loss_fn, parts.optimizer
    generator = torch.Generator(device=device).manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(X), device=device, generator=generator)
        for i in range(0, len(X), batch_size):
            index = order[i:i + batch_size]
            optimizer.zero_grad()
            loss_fn(model(X[index]), y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            float(loss_fn(model(X_val), y_val))
    sync(device)
    return len(X) * epochs / (time.perf_counter() - start)


CHECKS: tuple[tuple[str, Callable[[Context], Row]], ...] = (
    ("device auto, MLP", lambda ctx: check_auto(ctx, "MLP", MLP, "cpu")),
    ("device auto, CNN", lambda ctx: check_auto(ctx, "CNN", CNN, "cuda")),
    ("precision", check_precision),
    ("fused optimizer", check_fused),
    ("data on device", check_data_on_device),
    ("resume", check_resume),
    ("distributed", check_ranks),
    ("throughput", check_throughput),
)


# --------------------------------------------------------------------------- running and reporting


def run_checks(ctx: Context, names: list[str] | None = None) -> list[Row]:
    rows = []
    for name, check in CHECKS:
        if names is not None and name not in names:
            continue
        print(f"gpu_check: {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            row = check(ctx)
        except Exception as exc:
            traceback.print_exc()
            row = Row(name, "", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                      "FAILED")
        rows.append(Row(row.check, row.expected, row.result, row.status, time.perf_counter() - started))
    return rows


def format_table(rows: list[Row], ctx: Context, header: str) -> str:
    lines = [f"## GPU check ({header})", "", "| check | expected | result | status | s |", "|---|---|---|---|---:|"]
    lines += [f"| {r.check} | {r.expected} | {r.result.replace('|', '/')} | {r.status} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def describe_gpus() -> str:
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x {names[0]}; torch {torch.__version__}, CUDA {torch.version.cuda}" if names else "no GPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="also write the table here")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: rehearse the checks on the CPU (what runs there is what runs on a GPU)")
    parser.add_argument("--only", help="comma-separated checks to run (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}): "
              "nothing to check; run this on a machine with a GPU")
        return 0
    names = None if not args.only else [n.strip() for n in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(args.device, Path(tmp), torch.cuda.device_count() if args.device == "cuda" else 0)
        started = time.perf_counter()
        rows = run_checks(ctx, names)
    header = describe_gpus() if args.device == "cuda" else f"rehearsed on the CPU, torch {torch.__version__}"
    from benchmarks._common import emit_report

    emit_report(format_table(rows, ctx, f"{header}; {time.perf_counter() - started:.0f} s"), args.output)
    return 1 if any(r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
