"""The bounds hostile or broken input is held to, in one place, and how much memory there is.

    from schemas.limits import available_memory_bytes, clip_text
    if needed > available_memory_bytes(): ...

A config file, a data file or a row to predict can ask for far more than a
machine has (a YAML alias bomb, a zip-bomb NPZ, a model of billions of
parameters) or hold values no model can use (1e308). Each is refused with a
one-line error before anything large is allocated.
"""

from __future__ import annotations

import math
import os
import reprlib
from typing import Any

# YAML: aliases may add at most this many values to a document beyond the ones written out.
MAX_ALIAS_EXPANSION = 10_000
# YAML: mappings and sequences nested deeper than this are refused.
MAX_YAML_DEPTH = 100
# Error messages quote at most this many characters of any value the user gave.
MAX_QUOTED_CHARS = 200
# A config error lists at most this many problems, then says how many more there are.
MAX_ERROR_LINES = 20
# Feature values (raw, at training and at prediction) beyond +-this are refused:
# float32, the model's precision, ends at 3.4e38, and the scaler squares values.
MAX_ABS_FEATURE = 1e30
# After standard or min-max scaling, a value this many training standard
# deviations (or ranges) from the training data is refused at prediction.
MAX_SCALED_FEATURE = 1e6
# Images declaring more pixels than this (width x height, read from the file's
# header) are refused before decoding: Pillow's own decompression-bomb bound.
MAX_IMAGE_PIXELS = 89_478_485
# Decoding holds about this many bytes per declared pixel at once (RGBA, then
# the converted copy); more than the available memory is refused too.
IMAGE_DECODE_BYTES_PER_PIXEL = 8
# A config or sweep YAML file, a bundle's config.yaml (read whole; a real one is a few kilobytes, and checking
# YAML's node graph costs about 3 s a megabyte).
MAX_CONFIG_BYTES = 1_000_000
# A bundle's bundle.json: its data spec holds the vocabularies of a table's category columns.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
# JSON the pipeline reads back (bundle.json, its own records): nested deeper than this is refused.
MAX_JSON_DEPTH = 64
# The pipeline's own small records in its folders and caches (run.json, result.json, a verified-weights record).
MAX_RECORD_BYTES = 16 * 1024 * 1024
# Columns of a CSV or Parquet table: each is judged, encoded and scaled one by one (20,000 take about a minute
# on 2 cores); wider numeric data belongs in an NPZ array.
MAX_TABLE_COLUMNS = 20_000
# Reading a CSV table holds about this many bytes of memory per byte of the file (parsed columns and buffers).
TABLE_BYTES_PER_FILE_BYTE = 2
# Hidden layers, conv blocks or ResNet stages a built-in model may have: deeper ones train for hours per epoch
# on the machines these models are for, and a typo ([64] * 10000) should not start.
MAX_LAYERS = 256
# Memory of one data-parallel rank before its data: a Python process with torch and the pipeline imported
# (measured at about 350 MB on Linux with the CPU build).
RANK_MEMORY_BYTES = 400_000_000
# A sweep parameter's choices: more is a range in disguise (and each is checked against the run schema).
MAX_SWEEP_CHOICES = 1_000
# Prefect's default bound on a flow run's parameters, JSON-serialized (server.api.max_parameter_size).
PREFECT_MAX_PARAMETER_BYTES = 524_288
# Run and sweep names (they name folders): a letter or digit, then letters, digits, _ . -; this many at most.
MAX_NAME_CHARS = 64
NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_CHARS - 1}}}$"


def available_memory_bytes() -> int:
    """Memory available to a new allocation: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 2**63 - 1  # unknown: no check


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers, CI runners)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def _cgroup_cpu_quota() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:  # a kernel file: never a FIFO
            text = handle.read(256).split()
    except OSError:
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(text[0]) / int(text[1])))
    except (ValueError, ZeroDivisionError):
        return None


def format_bytes(n: float) -> str:
    """'3.2 GB' for 3_200_000_000."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _Repr(reprlib.Repr):
    """reprlib with generous limits that keeps a dict's own key order (reprlib sorts keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict = 4, 20, 20, 20
        self.maxset = self.maxfrozenset = 20
        self.maxstring = self.maxother = self.maxlong = MAX_QUOTED_CHARS

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in list(x.items())[: self.maxdict]]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"


_REPR = _Repr()


def clip_text(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """`repr(value)` for an error message, never longer than `limit` characters however large the value."""
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else f"<{value.bit_length()}-bit int>"
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        text = _REPR.repr(value)
    return clip_text(text, limit)
