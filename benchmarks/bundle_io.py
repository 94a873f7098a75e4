"""Bundle save and reload: `write_bundle` and `load_model` against plain `torch.save` / `torch.load`.

    python -m benchmarks.bundle_io                   # digits MLP and a 50M-parameter MLP, 5 rounds
    python -m benchmarks.bundle_io --quick           # 3 rounds
    python -m benchmarks.bundle_io --large-hidden 1024 --rounds 3 --output out.md

Cases, per model, on the same weights, in a temporary directory (warm page cache):

  bundle save   `tasks.bundle.write_bundle`: safetensors weights, config.yaml,
                bundle.json with sha256 of every file, written to a temporary
                directory and renamed into place.
  bundle load   `tasks.bundle.load_model` until it returns, ready to predict:
                manifest and config hashed, config validated, network
                rebuilt on the meta device, weights memory-mapped, eval
                mode. The weights' sha256 is not re-computed: `write_bundle`
                recorded it with the file's inode, size, mtime and ctime.
  bundle load, full check
                `load_model(verify="always")`: the weights hashed too, as on
                the first load of a copied or changed bundle.
  base save     `torch.save(model.state_dict(), f)`: what a hand-written script does.
  base load     build the network (`tasks.nets.networks.build_network`), `torch.load(f,
                weights_only=True)`, `load_state_dict`, eval: the same end
                state, without hashes, config or spec.
  base load, mmap
                `torch.load(f, weights_only=True, mmap=True)` into a network
                built on the meta device with `assign=True`: the fastest
                hand-written reload, with no checks.
  + first forward
                each load followed by one forward pass of 4 rows, which
                touches every weight: a mapped file's pages are read here.
  sha256        hashing the bundle's weights file alone (read + sha256): the
                floor that the full check puts under a load.

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

from benchmarks._common import PeakRSS, emit_report, machine_line, median, span
from schemas.data import DataSpec
from schemas.loading import load_config
from schemas.run import RunConfig
from tasks.bundle import WEIGHTS, load_model, write_bundle
from tasks.data import prepare_data
from tasks.device import available_cores
from tasks.nets.networks import build_network

TARGET_MS = 50.0  # load_model of the large model
LOAD_CASES = ("bundle load", "bundle load, full check", "base load", "base load, mmap")
LARGE_HIDDEN = 4096  # 4 hidden layers of 4096 on digits: 50.6M parameters
CASES = (
    "bundle save", "base save",
    "bundle load", "bundle load + first forward", "bundle load, full check", "bundle load, full check + first forward",
    "base load", "base load + first forward", "base load, mmap", "base load, mmap + first forward",
    "sha256",
)


@dataclass
class ModelResult:
    name: str
    parameters: int
    bundle_bytes: int
    base_bytes: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {case: [] for case in CASES})
    load_rss_delta_mib: dict[str, list[float]] = field(default_factory=lambda: {case: [] for case in LOAD_CASES})
    peak_rss_mib: float = 0.0  # the process's peak RSS during this model's rounds

    def median_ms(self, case: str) -> float:
        return median(self.seconds[case]) * 1000

    def ratio(self, bundle: str, base: str) -> float:
        """The median over rounds of the time ratio of case `bundle` to case `base`; above 1: the bundle is slower."""
        return median([b / a for b, a in zip(self.seconds[bundle], self.seconds[base])])


def model_configs(large_hidden: int) -> dict[str, RunConfig]:
    """Name -> run config: the default digits MLP and the large MLP on the same data."""
    base = ["device=cpu", "train.progress=false"]
    return {
        "digits MLP [128, 64]": load_config(None, base),
        f"MLP 4 x {large_hidden}": load_config(None, [*base, f"model.hidden_sizes=[{', '.join([str(large_hidden)] * 4)}]"]),
    }


def _load(case: str, bundle_dir: Path, base_file: Path, config: RunConfig, spec: DataSpec) -> torch.nn.Module:
    if case == "bundle load":
        return load_model(bundle_dir).model
    if case == "bundle load, full check":
        return load_model(bundle_dir, verify="always").model
    if case == "base load":
        loaded = build_network(config.model, spec)
        loaded.load_state_dict(torch.load(base_file, weights_only=True))
        return loaded.eval()
    with torch.device("meta"):  # the best a hand-written script does: no init, mapped, no copy
        loaded = build_network(config.model, spec, check_output=False)
    loaded.load_state_dict(torch.load(base_file, weights_only=True, mmap=True), assign=True)
    return loaded.eval()


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
            cases = LOAD_CASES if index % 2 == 0 else LOAD_CASES[::-1]
            for case in cases:
                gc.collect()
                with PeakRSS() as memory:
                    start = time.perf_counter()
                    loaded = _load(case, bundle_dir, base_file, config, spec)
                    timings[case] = time.perf_counter() - start
                    with torch.inference_mode():
                        outputs = loaded(probe)
                    timings[f"{case} + first forward"] = time.perf_counter() - start
                if not torch.equal(outputs, expected):
                    raise RuntimeError(f"{name}: the model reloaded by {case} gives different outputs")
                del loaded, outputs
                if index > 0:
                    result.load_rss_delta_mib[case].append(memory.delta_mib)
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
    spec = prepare_data(first.data, seed=first.seed).spec
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        return [run_model(name, config, spec, rounds, Path(tmp)) for name, config in configs.items()]


def format_report(results: list[ModelResult], rounds: int, threads: int) -> str:
    lines = [
        f"## Bundle save and reload ({threads} torch thread(s), {rounds} rounds + 1 warm-up discarded; "
        "bundle and baseline alternate first)",
        "",
        "- bundle save: `write_bundle` (safetensors, config, manifest with sha256 of every file, atomic rename)",
        "- bundle load: `load_model` until it returns, ready to predict: config and manifest verified, weights "
        "memory-mapped; their sha256 was recorded when this process wrote them, so they are not hashed again",
        "- bundle load, full check: `load_model(verify=\"always\")`, which hashes the weights as a first load of a "
        "copied or changed bundle does",
        "- base: `torch.save(state_dict)` / build the network + `torch.load(weights_only=True)` + `load_state_dict`; "
        "mmap: the best a hand-written script does (`torch.load(mmap=True)`, meta-device network, `assign=True`), "
        "no checks",
        "- + first forward: the load, then one forward pass of 4 rows, which touches every weight (mapped pages "
        "are read in here)",
        "- sha256: reading and hashing the bundle's weights file alone, the full check's floor",
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
        f"| model | bundle/base save | bundle/base load | bundle/base load + first forward | bundle/mmap load "
        f"| full check/base load | bundle load <= {TARGET_MS:.0f} ms | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        met = "met" if r.median_ms("bundle load") <= TARGET_MS else "NOT met"
        lines.append(
            f"| {r.name} | {r.ratio('bundle save', 'base save'):.2f} | {r.ratio('bundle load', 'base load'):.2f} "
            f"| {r.ratio('bundle load + first forward', 'base load + first forward'):.2f} "
            f"| {r.ratio('bundle load', 'base load, mmap'):.2f} "
            f"| {r.ratio('bundle load, full check', 'base load'):.2f} | {met} | {r.peak_rss_mib:,.0f} |"
        )
    lines += [
        "",
        "Ratios are medians of per-round time ratios (above 1: the bundle is slower). The target applies to the "
        "large model's `bundle load`. Every reloaded model's outputs are checked against the original's, bit for bit.",
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
    emit_report(report, args.output)
    return results


if __name__ == "__main__":
    print(machine_line(), file=sys.stderr)
    main()
