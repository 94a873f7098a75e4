"""How a round's trial requests reach the executor: plainly, `workers` threads at a time.

    from tasks.sweep.dispatch import plain_dispatch
    dispatch = plain_dispatch(executor, workers=2)
    results = dispatch(requests)   # per request, its TrialOutcome or the exception it ended with

A `Dispatch` never raises for one trial's failure: the exception takes the
trial's place in the list, and the round records it as a failed trial. The
sweep flow dispatches each trial as a Prefect task run instead
(`flows.stages.prefect_dispatch`), through the same `Dispatcher` signature.
"""

from __future__ import annotations

from typing import Callable, Sequence

from schemas.trial import TrialOutcome, TrialRequest
from tasks.sweep.executors import TrialExecutor

# A dispatch function runs a round's requests and returns, per request, its outcome or the exception.
Dispatch = Callable[[Sequence[TrialRequest]], list["TrialOutcome | BaseException"]]
# What makes one for an executor and a number of workers (plain_dispatch, or the flow's Prefect task runs).
Dispatcher = Callable[[TrialExecutor, int], Dispatch]


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
