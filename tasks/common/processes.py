"""Worker processes that need nothing of the command that started them.

    with workers_skip_the_command_module():
        executor = make_executor(config, data)   # a sweep's worker processes, a Dask LocalCluster's workers
        ...

A process started with spawn or forkserver first runs its parent's `__main__`
module again (as `__mp_main__`), so that what is defined there can be
unpickled. Under `python -m flows.train` or `python -m flows.sweep` that
module is the flow's, and with it Prefect, the tracking libraries and every
stage: seconds of imports in each worker for nothing, since what a worker
receives refers to `tasks`, `schemas` and torch only. So while workers start
and run, a bare `__main__` stands in for the command's module, which spawn
leaves alone. Any other main module (a user's script may define the model's
class) is run again as usual.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator

COMMANDS = "flows."  # the pipeline's command modules (python -m flows.train, flows.sweep)


@contextlib.contextmanager
def workers_skip_the_command_module() -> Iterator[None]:
    """Within the block, processes started with spawn or forkserver do not run the command's module again."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if main is None or not name.startswith(COMMANDS):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
