"""The one extension protocol of a run: a `Callback` with named hooks, each a no-op unless overridden.

    class PrintBest(Callback):
        def on_epoch_end(self, record):
            print(record.epoch, record.val_loss)

    run_recipe(config, callbacks=[PrintBest()])        # tasks.recipe
    train_model(parts, data, config.train, device, seed, callbacks=[PrintBest()])   # the train stage alone

The hooks, in the order a run calls them (as Lightning's and fastai's callbacks):

    on_run_start(config)      the recipe starts (tasks.recipe)
    on_device(device)         the device stage chose a device
    on_fit_start(config)      training starts (each attempt: a Prefect retry starts again here)
    on_epoch_end(record)      an epoch is trained and validated, before it is checkpointed;
                              return a `Stop` to end training after it
    on_fit_end(result)        training ended (all epochs, early stopping, or a `Stop`)
    on_run_end(run)           the run is evaluated and saved: its `RunResult`
    on_exception(error)       the run failed (after any retries) or was interrupted; once per run

Record-keeping (history.csv, run-folder outputs, TensorBoard, MLflow, the
Prefect UI) and sweep pruning are callbacks; the stages call hooks and nothing
else. A hook that raises ends the run with its exception, except
`on_exception`, whose own errors are swallowed so that every callback gets
to clean up. Callbacks run in the order given; a later callback may rely on
what an earlier one wrote (the run-folder outputs come before the loggers
that upload them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from schemas.device import DeviceInfo
    from schemas.recipe import RunResult
    from schemas.run import RunConfig
    from schemas.train import EpochRecord, TrainConfig, TrainResult

HOOKS = (
    "on_run_start", "on_device", "on_fit_start", "on_epoch_end", "on_fit_end", "on_run_end", "on_exception",
)


@dataclass(frozen=True)
class Stop:
    """What `on_epoch_end` returns to end training after this epoch.

    `reason` is recorded in the TrainResult (`stop_reason`). With `prune`,
    the run is abandoned after training: no evaluation and no bundle (a
    sweep trial that cannot beat the others, as Optuna's pruners decide).
    """

    reason: str
    prune: bool = False


class Callback:
    """Override the hooks you need; every hook does nothing by default (see the module docstring)."""

    def on_run_start(self, config: "RunConfig") -> None:
        """The recipe starts the run `config`."""

    def on_device(self, device: "DeviceInfo") -> None:
        """The device stage chose `device` (or the sweep chose it for every trial)."""

    def on_fit_start(self, config: "TrainConfig") -> None:
        """Training starts, or starts again in a retried attempt that resumes from its checkpoint."""

    def on_epoch_end(self, record: "EpochRecord") -> Stop | None:
        """Epoch `record.epoch` is trained and validated; return a Stop to end training after it."""
        return None

    def on_fit_end(self, result: "TrainResult") -> None:
        """Training ended; `result.stop_reason` says whether a callback stopped it."""

    def on_run_end(self, run: "RunResult") -> None:
        """The run ended: trained, evaluated and saved (or pruned, with no evaluation)."""

    def on_exception(self, error: BaseException) -> None:
        """The run failed with `error`, or was interrupted (KeyboardInterrupt); called once."""


class LambdaCallback(Callback):
    """A callback made of functions, as Keras's: `LambdaCallback(on_epoch_end=seen.append)`."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise TypeError(f"unknown hook(s) {', '.join(unknown)}; the hooks are {', '.join(HOOKS)}")
        for name, hook in hooks.items():
            setattr(self, name, hook)


class CallbackList(Callback):
    """Several callbacks called in order as one; what the recipe and the train stage hand hooks to.

    `on_epoch_end` calls every callback (each sees every epoch) and returns
    the first Stop asked for. `on_exception` reaches every callback even if
    one of them raises, and never raises itself.
    """

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks: list[Callback] = []
        for callback in callbacks:
            if isinstance(callback, CallbackList):
                self.callbacks.extend(callback.callbacks)
            elif isinstance(callback, Callback):
                self.callbacks.append(callback)
            else:
                raise TypeError(
                    f"{callback!r} is not a Callback; subclass tasks.common.callbacks.Callback, or wrap a "
                    "function as LambdaCallback(on_epoch_end=fn)"
                )

    def on_run_start(self, config: "RunConfig") -> None:
        for callback in self.callbacks:
            callback.on_run_start(config)

    def on_device(self, device: "DeviceInfo") -> None:
        for callback in self.callbacks:
            callback.on_device(device)

    def on_fit_start(self, config: "TrainConfig") -> None:
        for callback in self.callbacks:
            callback.on_fit_start(config)

    def on_epoch_end(self, record: "EpochRecord") -> Stop | None:
        stops = [callback.on_epoch_end(record) for callback in self.callbacks]
        return next((stop for stop in stops if stop is not None), None)

    def on_fit_end(self, result: "TrainResult") -> None:
        for callback in self.callbacks:
            callback.on_fit_end(result)

    def on_run_end(self, run: "RunResult") -> None:
        for callback in self.callbacks:
            callback.on_run_end(run)

    def on_exception(self, error: BaseException) -> None:
        for callback in self.callbacks:
            try:
                callback.on_exception(error)
            except Exception:  # the run's own error is the one to report
                pass
