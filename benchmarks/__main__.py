"""Run every benchmark module's `main()` in turn.

    python -m benchmarks            # full size
    python -m benchmarks --quick    # smaller workloads, fewer rounds
"""

from __future__ import annotations

import argparse

from benchmarks import sweep_scaling, train_throughput

MODULES = (train_throughput, sweep_scaling)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = parser.parse_args(argv)
    for module in MODULES:
        module.main(["--quick"] if args.quick else [])


if __name__ == "__main__":
    main()
