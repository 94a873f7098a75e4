"""A run started from a deployment (the UI's form, `prefect deployment run`, a schedule) as it is meant.

    config = deployed_config(RunConfig, config)   # first thing in a flow; a command-line run: unchanged
    flow_run_name(RunConfig, lambda config: config.name)   # a flow's `flow_run_name`

What differs from a command-line run, and is settled here before any task:

- a run made by a schedule with parameter overrides (the UI's "+ Schedule"
  dialog) gets the deployment's config with the overrides laid over it key by
  key; Prefect's scheduler replaces `config` whole, which ran the schema's
  defaults (digits) instead of the deployment's preset;
- values of another union member that the form kept after a tab switch are
  left out (`schemas.form`), named in one log line;
- a custom model's `target` is imported only if the serving process allows
  its module (PYTORCH_WORKFLOW_TRUSTED_MODULES, as for bundles): anyone who
  can reach Prefect's API can start a deployment with any parameters;
- the run's lines go to its Prefect log only (`tasks.common.log.echo_to_terminal`):
  the serving process prints that log, so the serving terminal would show
  each line twice;
- a run started by hand keeps the name it was given (the form's Run Name,
  `--flow-run-name`, `run_deployment(flow_run_name=...)`): that name, as a
  folder name, becomes `config.name`, so the run folder, the artifact keys
  and the report use it and two such runs never share artifact keys.
"""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import ConfigError, PipelineError
from schemas.form import from_form, left_out_line, merge_overrides
from schemas.keys import format_validation_error
from schemas.limits import MAX_NAME_CHARS, NAME_PATTERN
from schemas.run import RunConfig
from tasks.bundle import TRUSTED_MODULES_ENV, is_trusted
from tasks.common.log import echo_to_terminal, say

C = TypeVar("C", bound=BaseModel)


def deployment_run() -> Any | None:
    """The current flow run when a deployment started it; None for a command-line or library call."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return run if run is not None and run.deployment_id is not None else None


def given_name(run: Any) -> str | None:
    """The name a run started by hand was given, as a folder name; None for a scheduled run (Prefect makes
    its name up) or one whose name has no letter or digit."""
    if run is None or run.auto_scheduled or _created_by_schedule(run):
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-._")[:MAX_NAME_CHARS].rstrip("-._")
    return name if re.fullmatch(NAME_PATTERN, name) else None


def flow_run_name(cls: type[C], name_of: Callable[[Any], str]) -> str:
    """A flow's `flow_run_name`: the name a run started by hand was given, else `name_of(config)`.

    For a run made by a schedule, `config` is the deployment's with the
    schedule's overrides laid over it (a bad one is the flow's to report).
    """
    from prefect.context import FlowRunContext

    run = deployment_run()
    if given_name(run) is not None:
        return run.name
    context = FlowRunContext.get()
    config = (context.parameters if context is not None else {}).get("config")
    if isinstance(config, cls):
        try:
            config = deployed_config(cls, config, log=False)
        except PipelineError:
            pass  # the flow fails on it first thing, with the message
    return name_of(config)


def deployed_config(cls: type[C], config: C, log: bool = True) -> C:
    """`config` as the deployment run means it (module docstring); unchanged outside a deployment run.

    With `log`, the form's left-out values are said in one line. A ConfigError
    names what is wrong: a field of the merged schedule config, or a custom
    model the serving process does not allow.
    """
    run = deployment_run()
    if run is None:
        return config
    echo_to_terminal(False)
    raw = (run.parameters or {}).get("config")
    overrides = _schedule_overrides(run)
    if overrides is not None:
        raw = merge_overrides(cls, _deployment_parameters(run).get("config", {}), overrides)
    if isinstance(raw, dict):
        values, left_out = from_form(cls, raw)
        line = left_out_line(left_out)
        if log and line:
            say(line)
        if overrides is not None:
            config = _validate(cls, values)
    check_allowed_code(config)
    name = given_name(run)
    if name is not None and isinstance(config, RunConfig) and config.name != name:
        config = config.model_copy(update={"name": name})  # a sweep keeps config.name: it names the study
    return config


def check_allowed_code(config: Any) -> None:
    """A ConfigError unless every custom model the config names is allowed here: a run's model, a sweep's base
    model and each model a sweep's choices can make."""
    for model in _models(config):
        if getattr(model, "kind", None) != "custom":
            continue
        module = model.target.partition(":")[0]
        if not is_trusted(module, trust_code=False):
            raise ConfigError(
                f"model.target = {model.target!r}: a run started from a deployment imports only modules the serving "
                f"process allows, and {module!r} is not one; start the serving process with "
                f"{TRUSTED_MODULES_ENV}={module} to allow it"
            )


def _models(config: Any) -> list[Any]:
    if not hasattr(config, "base"):
        return [getattr(config, "model", None)]
    models = [config.base.model]
    for key, param in config.space.items():
        if key.split(".")[0] == "model" and hasattr(param, "choices"):
            models += [config.trial_config({key: choice}).model for choice in param.choices]
    return models


def _validate(cls: type[C], values: dict[str, Any]) -> C:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cls, "config", "the schedule's parameters")) from None


def _created_by_schedule(run: Any) -> bool:
    created_by = getattr(run, "created_by", None)
    return created_by is not None and str(getattr(created_by, "type", "")).upper() == "SCHEDULE"


def _schedule_overrides(run: Any) -> Any | None:
    """The `config` overrides of the schedule that made this run; None when there are none."""
    if not _created_by_schedule(run):
        return None
    deployment = _read_deployment(run)
    for schedule in deployment.schedules or ():
        if schedule.id == run.created_by.id:
            return (schedule.parameters or {}).get("config")
    return None


def _deployment_parameters(run: Any) -> dict[str, Any]:
    return dict(_read_deployment(run).parameters or {})


def _read_deployment(run: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment(run.deployment_id)
