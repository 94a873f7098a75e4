"""The commands import no module from the working directory: it comes off `sys.path` before anything else loads.

    if __name__ == "__main__":  # the first lines of every entry point, before any other import
        from flows._import_path import working_directory_off_path
        working_directory_off_path()

`python -m flows.predict` puts the directory it is started from first on the
import path, so a `yaml.py`, `pandas.py` or `torch.py` lying there (in a
received bundle's folder, a download folder) would be imported, and run, in
place of the real package. Called first, this takes that entry (and any
other that names the working directory) off the path, unless the user put
it there on purpose in PYTHONPATH, and sets PYTHONSAFEPATH=1 for the
processes the command starts (Prefect's temporary server, sweep workers,
training ranks, Dask workers), so they never add it either.

The project's own packages stay importable: with `pip install -e .` or an
install they are found without the working directory; run from a checkout
that is not the installed one (or with no install), the checkout's root is
appended at the end of the path, after the standard library and the
installed packages, so it cannot stand in for any of them.

What this cannot reach: the modules Python imports before the entry point's
first line (`python -m` imports `importlib.machinery` itself, from the
working directory if one is there, and finds `flows` there too). `python -P
-m flows.predict` (Python 3.11+), or PYTHONSAFEPATH=1 in the environment,
leaves the working directory off from the start.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the folder holding flows/, tasks/, schemas/


def working_directory_off_path() -> list[str]:
    """Take the working directory off `sys.path` (unless PYTHONPATH names it); the entries removed.

    Also sets PYTHONSAFEPATH=1 for child processes, and appends the project's
    root when its packages would no longer be found.
    """
    cwd = _real(os.getcwd())
    explicit = {_real(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    removed: list[str] = []
    if cwd is not None and cwd not in explicit:
        for entry in list(sys.path):
            if isinstance(entry, str) and _real(entry or ".") == cwd:
                sys.path.remove(entry)
                removed.append(entry)
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    if not _found_in_project("schemas") and str(PROJECT_ROOT) not in sys.path:
        sys.path.append(str(PROJECT_ROOT))  # after the standard library and the installed packages
    return removed


def _found_in_project(package: str) -> bool:
    """Whether importing `package` would take it from this checkout (not another one's install, or nowhere)."""
    spec = importlib.util.find_spec(package)
    where = spec and (spec.origin or next(iter(spec.submodule_search_locations or ()), None))
    return bool(where) and Path(where).resolve().is_relative_to(PROJECT_ROOT)


def _real(path: str) -> str | None:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None
