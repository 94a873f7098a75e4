"""The project's deployments, declared as data: which flow, which preset, when, with which tags.

No training logic lives here. Parameters come from the preset YAML in
`configs/` (plus optional `--set`-style overrides), validated by the run
schema when the deployment is built, so a broken preset fails `serve`
instead of a run at 2 a.m. `python -m deployments.serve` serves them;
`deployments/prefect.yaml` is generated from the same list for
`prefect deploy` with a work pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMEZONE = "UTC"  # of the schedules below: the nightly run starts at 02:00 UTC wherever the server runs


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    flow: str  # "train" or "sweep"
    config: str  # preset path, relative to the repository root
    description: str
    cron: str | None = None
    interval_seconds: int | None = None
    tags: tuple[str, ...] = ()
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def entrypoint(self) -> str:
        return {"train": "flows/train.py:train_flow", "sweep": "flows/sweep.py:sweep_flow"}[self.flow]

    def parameters(self) -> dict[str, Any]:
        """The flow's parameters: the preset, resolved and validated, as JSON in the shape of the UI's form."""
        from schemas.run import form_values, without_nulls

        if self.flow == "train":
            from schemas.loading import load_config

            return {"config": form_values(load_config(ROOT / self.config, list(self.overrides)))}
        from schemas.sweep import load_sweep_config

        sweep = load_sweep_config(ROOT / self.config, list(self.overrides))
        return {"config": {**without_nulls(sweep.model_dump(mode="json")), "base": form_values(sweep.base)}}

    def schedule(self) -> dict[str, Any]:
        """The schedule as `prefect.yaml` writes it: with its time zone (the UI shows it beside the schedule)
        and a slug, the deployment's name, which keeps it apart from schedules added in the UI."""
        if self.cron:
            return {"cron": self.cron, "timezone": TIMEZONE, "slug": self.name}
        if self.interval_seconds:
            return {"interval": self.interval_seconds, "timezone": TIMEZONE, "slug": self.name}
        return {}

    def schedules(self) -> list[Any]:
        """The schedule for `flow.to_deployment(schedules=...)`."""
        from prefect.schedules import Cron, Interval

        if self.cron:
            return [Cron(self.cron, timezone=TIMEZONE, slug=self.name)]
        if self.interval_seconds:
            return [Interval(self.interval_seconds, timezone=TIMEZONE, slug=self.name)]
        return []


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        name="digits-mlp",
        flow="train",
        config="configs/digits_mlp.yaml",
        description="On demand: the default MLP on scikit-learn's digits. Edit any field of the config in the form.",
        tags=("train", "digits"),
    ),
    DeploymentSpec(
        name="digits-mlp-nightly",
        flow="train",
        config="configs/digits_mlp.yaml",
        overrides=("name=digits-mlp-nightly",),
        description="Every night at 02:00 UTC: retrain the digits MLP.",
        cron="0 2 * * *",
        tags=("train", "digits", "scheduled"),
    ),
    DeploymentSpec(
        name="iris-hourly",
        flow="train",
        config="configs/iris.yaml",
        description="Every hour: the iris MLP, a seconds-long run to watch the schedule work.",
        interval_seconds=3600,
        tags=("train", "iris", "scheduled"),
    ),
    DeploymentSpec(
        name="digits-sweep",
        flow="sweep",
        config="configs/sweep_digits.yaml",
        description="On demand: the digits MLP sweep (Optuna TPE, median pruning). Runs continue the study in "
        "sweeps/{config.name}/ on the serving machine; raise n_trials to search further.",
        tags=("sweep", "digits"),
    ),
)


def find(name: str) -> DeploymentSpec:
    for spec in DEPLOYMENTS:
        if spec.name == name:
            return spec
    from schemas.errors import ConfigError

    raise ConfigError(f"no deployment named {name!r}; there are: {', '.join(s.name for s in DEPLOYMENTS)}")
