"""OpenMP's wait policy for the commands: passive, unless the user chose one.

    if __name__ == "__main__":  # at the top of an entry point, before anything imports torch
        from tasks.common.omp import passive_openmp_default
        passive_openmp_default()

By default an OpenMP thread that finishes its share of an operation spins,
waiting for the next one, instead of sleeping. On a machine where another
process holds a core, torch's threads then spin for a core they cannot get,
and training with 2 threads on 2 busy cores ran up to 20 times slower than
with 1. `OMP_WAIT_POLICY=PASSIVE` lets them sleep. The OpenMP runtime reads
the variable once, when torch's library loads, so it must be in the
environment before torch is first imported; processes started from the
command (sweep workers, DataLoader workers, Dask workers, the runs of
`deployments.serve`) inherit it. Nothing happens at import of this module.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def passive_openmp_default() -> str:
    """Set OMP_WAIT_POLICY=PASSIVE unless the environment already sets it (a user's ACTIVE is kept); the value.

    Called after torch was imported it still reaches the processes started
    from here, but not this one: its OpenMP runtime has read the variable.
    """
    return os.environ.setdefault(WAIT_POLICY, "PASSIVE")
