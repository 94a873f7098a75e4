"""Benchmarks for the workflow's tasks; run them all with `python -m benchmarks [--quick]`."""
