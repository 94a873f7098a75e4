"""How a round's trial requests reach the executor: as Prefect task runs, or as plain threads.

    from tasks.sweep.dispatch import prefect_dispatch
    dispatch = prefect_dispatch(executor, workers=2, retry={"retries": 1})
    results = dispatch(requests)   # per request, its TrialOutcome or the exception it ended with

A `Dispatch` never raises for one trial's failure: the exception takes the
trial's place in the list, and the round records it as a failed trial.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.trial import TrialOutcome, TrialRequest
from tasks.sweep.executors import TrialExecutor
from tasks.sweep.labels import trial_label

# A dispatch function runs a round's requests and returns, per request, its outcome or the exception.
Dispatch = Callable[[Sequence[TrialRequest]], list["TrialOutcome | BaseException"]]


def _trial_run_name() -> str:
    from prefect.runtime import task_run

    request = task_run.parameters["request"]
    return trial_label(request.number, request.params)


@task(name="trial", task_run_name=_trial_run_name, cache_policy=NO_CACHE)
def run_trial(request: TrialRequest, executor: TrialExecutor) -> TrialOutcome:
    """Run one trial on `executor` and wait for it; a pruned trial completes with state "pruned"."""
    return executor.run(request)


def prefect_dispatch(executor: TrialExecutor, workers: int, retry: dict[str, Any]) -> Dispatch:
    """Run each request as its own Prefect task run, `workers` at a time."""

    def dispatch(requests: Sequence[TrialRequest]) -> list[TrialOutcome | BaseException]:
        results: list[TrialOutcome | BaseException] = []
        with ThreadPoolTaskRunner(max_workers=workers) as runner:
            futures = [
                runner.submit(run_trial.with_options(**retry), {"request": r, "executor": executor}) for r in requests
            ]
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as exc:  # the trial failed after its retries: recorded, the sweep goes on
                    results.append(exc)
        return results

    return dispatch


def plain_dispatch(executor: TrialExecutor, workers: int) -> Dispatch:
    """Run a round's requests on `executor`, `workers` at a time, without Prefect task runs."""
    from concurrent.futures import ThreadPoolExecutor

    def dispatch(requests: Sequence[TrialRequest]) -> list[TrialOutcome | BaseException]:
        def one(request: TrialRequest) -> TrialOutcome | BaseException:
            try:
                return executor.run(request)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, requests))

    return dispatch
