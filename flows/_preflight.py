"""What the commands check before a Prefect server starts or a folder is made: the server, the parameters, the machine.

    check_api_reachable()                                   # PREFECT_API_URL answers, or one line naming it
    check_parameter_size({"config": config.model_dump(mode="json")}, "the sweep config")
    check_machine_first(config, shape)                      # ranks and one training step fit this machine

Each is answered in about a second, with one `error:` line, instead of after
minutes (a sweep space of 100,000 choices takes minutes to validate before
the server refuses it with HTTP 422) or never (64 ranks on 2 cores).
"""

from __future__ import annotations

import json
from typing import Any

from schemas.device import InputShape
from schemas.errors import ConfigError, ServiceError
from schemas.limits import format_bytes
from schemas.run import RunConfig

API_TIMEOUT_SECONDS = 5.0


def check_api_reachable() -> None:
    """A ServiceError (exit 1) naming PREFECT_API_URL when a server is named there and does not answer.

    Any HTTP answer counts (an API that wants a key answers too); only a
    failed connection or no answer within API_TIMEOUT_SECONDS does not.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=API_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        reason = _reason(exc)
        raise ServiceError(
            f"cannot reach the Prefect server at {url} (PREFECT_API_URL): {reason}; start it "
            "(prefect server start), fix the address, or unset PREFECT_API_URL to run with a temporary local server"
        ) from None
    except ValueError as exc:  # not a URL httpx can use
        raise ServiceError(f"PREFECT_API_URL = {url!r} is not a usable URL ({exc}); fix it or unset it") from None


def _reason(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {API_TIMEOUT_SECONDS:g} s"
    text = str(exc).strip() or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200]


def check_parameter_size(parameters: dict[str, Any], what: str) -> None:
    """A ConfigError when `parameters`, JSON-serialized, exceed the Prefect server's bound on a flow run's parameters."""
    from prefect.settings import get_current_settings

    limit = get_current_settings().server.api.max_parameter_size
    if not limit:
        return
    size = len(json.dumps(parameters, separators=(",", ":"), default=str).encode())
    if size > limit:
        raise ConfigError(
            f"{what} is {format_bytes(size)} as a flow run's parameters, more than the {format_bytes(limit)} "
            "Prefect's server accepts (PREFECT_SERVER_API_MAX_PARAMETER_SIZE); make it smaller (fewer choices: "
            "search a range instead of listing values)"
        )


def check_machine_first(config: RunConfig, shape: InputShape | None) -> None:
    """Ranks against the cores and memory, and one training step against the memory, from the config alone."""
    from tasks.model import check_training_memory
    from tasks.train import check_ranks

    ranks = config.train.distributed.nproc_per_node
    if isinstance(ranks, int):
        device = "cuda" if config.device.name.startswith("cuda") else "cpu"
        check_ranks(config.train.distributed, ranks, device)
    if shape is not None:
        check_training_memory(config, shape)

