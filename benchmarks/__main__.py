"""Run every benchmark module in turn and write one results file.

    python -m benchmarks                                   # full size; writes benchmarks/results.md
    python -m benchmarks --quick                           # smaller workloads, fewer rounds
    python -m benchmarks --only train_throughput,bundle_io --output /tmp/results.md

Each module also runs alone: `python -m benchmarks.<name> [--quick] [--output FILE]`.
The results file starts with the date, the machine (cores, CPU, torch) and the
command, then each module's markdown report in the order below.
"""

from __future__ import annotations

if __name__ == "__main__":  # before any other import: no module from the working directory (flows/_import_path.py)
    from flows._import_path import working_directory_off_path

    working_directory_off_path()

import argparse
import importlib
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

# Registry: module names under benchmarks/, run in this order. Each has main(argv) and accepts --quick and --output.
MODULES = (
    "train_throughput", "startup", "orchestration", "bundle_io", "device_selection", "sweep_scaling", "finetune", "raw_tables",
    "distributed_training",
    "busy_machine", "feedback",
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.md"


def header(argv: list[str]) -> str:
    from benchmarks._common import machine_line

    command = "python -m benchmarks" + ("" if not argv else " " + shlex.join(argv))
    return "\n".join([
        "# Benchmark results",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_line()}",
        f"- command: `{command}`",
        "- ratios are the result; absolute times are context (a shared machine is noisy)",
        "",
    ])


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", help=f"comma-separated modules to run (default: all of {', '.join(MODULES)})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results file (default: %(default)s)")
    args = parser.parse_args(argv)
    names = MODULES if not args.only else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(MODULES)}")

    sections = [header(argv)]
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as tmp:
        for name in names:
            print(f"== benchmarks.{name}", file=sys.stderr, flush=True)
            module = importlib.import_module(f"benchmarks.{name}")
            part = Path(tmp) / f"{name}.md"
            module.main([*(["--quick"] if args.quick else []), "--output", str(part)])
            text = part.read_text(encoding="utf-8").strip()
            if not text.startswith("#"):  # a report without a heading of its own
                text = f"## {name.replace('_', ' ').capitalize()}\n\n{text}"
            sections.append(text + "\n")
            # Written after every module, so an interrupted run keeps what finished.
            args.output.write_text("\n".join(sections), encoding="utf-8")
    print(f"results written to {args.output}", file=sys.stderr)
    return args.output


if __name__ == "__main__":
    main()
