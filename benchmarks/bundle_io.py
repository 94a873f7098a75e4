"""Bundle save and reload: `write_bundle` and `load_model` against plain `torch.save` / `torch.load`.

    python -m benchmarks.bundle_io                   # digits MLP and a 50M-parameter MLP, 5 rounds
    python -m benchmarks.bundle_io --quick           # 3 rounds
    python -m benchmarks.bundle_io --large-hidden 1024 --rounds 3 --output out.md

Cases, per model, on the same weights, in a temporary directory (warm page cache):

  bundle save   `tasks.bundle.write_bundle`: safetensors weights, config.yaml,
                bundle.json with sha256 of every file, written to a temporary
                directory and renamed into place.
  bundle load   `tasks.bundle.load_model` until it returns, ready to predict:
                manifest, sha256 of weights and config verified, config
                validated, network rebuilt, weights loaded, eval mode.
  base save     `torch.save(model.state_dict(), f)`: what a hand-written script does.
  base load     build the network (`tasks.model.build_network`), `torch.load(f,
                weights_only=True)`, `load_state_dict`, eval: the same end
                state, without hashes, config or spec.
  sha256        hashing the bundle's weights file alone (read + sha256): the
                floor that the integrity check puts under `bundle load`.

Models: the default digits MLP [128, 64] (about 17k parameters) and an MLP
with four hidden layers of 4096 units on the same input (about 50.6M
parameters, 202 MB of float32 weights). Target: bundle load <= 50 ms for
the large one.

Method: one warm-up round (discarded), then N rounds; each round runs save,
then load, for the bundle and the baseline in alternating order. Reported:
median and min-max per case, the ratios bundle/base per round (medians),
bundle size on disk, and peak RSS during each load above the RSS at its
start (the memory the load needs beyond the result's own weights). After
each bundle load the reloaded model's outputs are checked against the
original's.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks._common import PeakRSS, machine_line, median, span
from schemas.loading import load_config
from schemas.run import RunConfig
from tasks.bundle import WEIGHTS, load_model, write_bundle
from tasks.data import DataSpec, prepare_data
from tasks.device import available_cores
from tasks.model import build_network

TARGET_MS = 50.0  # load_model of the large model
LARGE_HIDDEN = 4096  # 4 hidden layers of 4096 on digits: 50.6M parameters
CASES = ("bundle save", "bundle load", "base save", "base load", "sha256")


@dataclass
class ModelResult:
    name: str
    parameters: int
    bundle_bytes: int
    base_bytes: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {case: [] for case in CASES})
    load_rss_delta_mib: dict[str, list[float]] = field(default_factory=lambda: {"bundle load": [], "base load": []})
    peak_rss_mib: float = 0.0  # the process's peak RSS during this model's rounds

    def median_ms(self, case: str) -> float:
        return median(self.seconds[case]) * 1000

    def ratio(self, kind: str) -> float:
        """The median over rounds of bundle/base time for `kind` ("save" or "load"); above 1: the bundle is slower."""
        return median([b / a for b, a in zip(self.seconds[f"bundle {kind}"], self.seconds[f"base {kind}"])])


def model_configs(large_hidden: int) -> dict[str, RunConfig]:
    """Name -> run config: the default digits MLP and the large MLP on the same data."""
    base = ["device=cpu", "train.progress=false"]
    return {
        "digits MLP [128, 64]": load_config(None, base),
        f"MLP 4 x {large_hidden}": load_config(None, [*base, f"model.hidden_sizes=[{', '.join([str(large_hidden)] * 4)}]"]),
    }


def run_model(name: str, config: RunConfig, spec: DataSpec, rounds: int, folder: Path) -> ModelResult:
    torch.manual_seed(config.seed)
    model = build_network(config.model, spec).eval()
    probe = torch.randn(4, spec.n_features)
    with torch.inference_mode():
        expected = model(probe)
    result = ModelResult(name, sum(p.numel() for p in model.parameters()), 0, 0)
    peak = PeakRSS(interval=0.02)
    with peak:
        for index in range(rounds + 1):
            print(f"bundle io: {name}, {'warm-up' if index == 0 else f'round {index}/{rounds}'}", file=sys.stderr, flush=True)
            bundle_dir, base_file = folder / f"bundle-{index}", folder / f"base-{index}.pt"
            order = ("bundle", "base") if index % 2 == 0 else ("base", "bundle")
            timings: dict[str, float] = {}
            for kind in order:
                gc.collect()
                start = time.perf_counter()
                if kind == "bundle":
                    write_bundle(model, config, spec, None, bundle_dir)
                else:
                    torch.save(model.state_dict(), base_file)
                timings[f"{kind} save"] = time.perf_counter() - start
            for kind in order:
                gc.collect()
                with PeakRSS() as memory:
                    start = time.perf_counter()
                    if kind == "bundle":
                        loaded = load_model(bundle_dir).model
                    else:
                        loaded = build_network(config.model, spec)
                        loaded.load_state_dict(torch.load(base_file, weights_only=True))
                        loaded.eval()
                    timings[f"{kind} load"] = time.perf_counter() - start
                with torch.inference_mode():
                    if not torch.equal(loaded(probe), expected):
                        raise RuntimeError(f"{name}: the model reloaded by {kind} load gives different outputs")
                del loaded
                if index > 0:
                    result.load_rss_delta_mib[f"{kind} load"].append(memory.delta_mib)
            gc.collect()
            start = time.perf_counter()
            _sha256_file(bundle_dir / WEIGHTS)
            timings["sha256"] = time.perf_counter() - start
            if index > 0:
                for case, seconds in timings.items():
                    result.seconds[case].append(seconds)
            result.bundle_bytes = sum(f.stat().st_size for f in bundle_dir.iterdir())
            result.base_bytes = base_file.stat().st_size
            shutil.rmtree(bundle_dir)
            base_file.unlink()
    result.peak_rss_mib = peak.peak_mib
    return result


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_benchmark(rounds: int, large_hidden: int = LARGE_HIDDEN) -> list[ModelResult]:
    configs = model_configs(large_hidden)
    first = next(iter(configs.values()))
    spec = prepare_data.fn(first.data, seed=first.seed).spec
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        return [run_model(name, config, spec, rounds, Path(tmp)) for name, config in configs.items()]


def format_report(results: list[ModelResult], rounds: int, threads: int) -> str:
    lines = [
        f"## Bundle save and reload ({threads} torch thread(s), {rounds} rounds + 1 warm-up discarded; "
        "bundle and baseline alternate first)",
        "",
        "- bundle: `write_bundle` / `load_model` (safetensors, config, manifest, sha256 verified on load, "
        "ready to predict)",
        "- base: `torch.save(state_dict)` / build the network + `torch.load(weights_only=True)` + `load_state_dict`",
        "- sha256: reading and hashing the bundle's weights file alone, the integrity check's floor",
        "",
        "| model | parameters | bundle MB | case | median ms | min-max ms | peak RSS above start, MiB |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        for i, case in enumerate(CASES):
            head = f"| {r.name} | {r.parameters:,} | {r.bundle_bytes / 1e6:,.1f} " if i == 0 else "|  |  |  "
            ms = [s * 1000 for s in r.seconds[case]]
            memory = r.load_rss_delta_mib.get(case)
            lines.append(
                f"{head}| {case} | {median(ms):,.1f} | {span(ms, '{:,.1f}')} "
                f"| {'' if memory is None else f'{max(memory):,.0f}'} |"
            )
    lines += [
        "",
        f"| model | bundle/base save | bundle/base load | sha256 share of bundle load | bundle load <= {TARGET_MS:.0f} ms "
        "| peak RSS (MiB) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        share = r.median_ms("sha256") / r.median_ms("bundle load")
        met = "met" if r.median_ms("bundle load") <= TARGET_MS else "NOT met"
        lines.append(
            f"| {r.name} | {r.ratio('save'):.2f} | {r.ratio('load'):.2f} | {share:.0%} | {met} | {r.peak_rss_mib:,.0f} |"
        )
    lines += [
        "",
        "Ratios are medians of per-round time ratios (above 1: the bundle is slower). The target applies to the "
        "large model; the sha256 row is the part of `bundle load` that verifying the weights cannot avoid.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[ModelResult]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bundle_io", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="timed rounds after the warm-up (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument(
        "--large-hidden", type=int, default=LARGE_HIDDEN,
        help=f"width of the large MLP's 4 hidden layers (default {LARGE_HIDDEN}: 50.6M parameters)",
    )
    parser.add_argument("--output", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds = args.rounds or (3 if args.quick else 5)
    threads = available_cores()
    torch.set_num_threads(threads)
    results = run_benchmark(rounds, args.large_hidden)
    report = format_report(results, rounds, threads)
    print(report)
    if args.output is not None:
        args.output.write_text(report, encoding="utf-8")
    return results


if __name__ == "__main__":
    print(machine_line(), file=sys.stderr)
    main()
