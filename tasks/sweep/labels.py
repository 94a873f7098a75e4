"""How a trial and a searched value are written in progress lines, tables and the summary."""

from __future__ import annotations

import json
from typing import Any


def trial_label(number: int, params: dict[str, Any]) -> str:
    """`trial-3[lr=0.01,batch_size=64]`: the last part of each key, unless two keys share it."""
    last = [key.split(".")[-1] for key in params]
    names = [short if last.count(short) == 1 else key for key, short in zip(params, last)]
    shown = ",".join(f"{name}={format_value(value)}" for name, value in zip(names, params.values()))
    return f"trial-{number}[{shown}]"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
