"""Ctrl-C while a command is still starting (importing torch, Prefect, pandas) ends it with one line, exit 130.

    if __name__ == "__main__":          # the entry point's first lines
        quiet_interrupt_while_starting()
    ...                                 # imports of torch, Prefect and the stages
    if __name__ == "__main__":
        interrupts_as_usual()           # from here `run_command` reports a Ctrl-C itself
        exit_quickly(main())

Python's own handler raises KeyboardInterrupt wherever the import happens
to be, and the command would end in a traceback of some library's module.
Until `interrupts_as_usual`, Ctrl-C says `interrupted` and raises SystemExit:
the atexit handlers run, so a temporary Prefect server started early is
stopped (its watchdog would stop it anyway), and nothing else has been
written yet.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command ended by Ctrl-C


def _starting_interrupted(signum: int, frame: FrameType | None) -> None:
    print("interrupted", file=sys.stderr)
    raise SystemExit(INTERRUPTED)


def quiet_interrupt_while_starting() -> None:
    """Until `interrupts_as_usual`, Ctrl-C prints `interrupted` and exits 130, without a traceback."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the user chose to ignore it
        signal.signal(signal.SIGINT, _starting_interrupted)


def interrupts_as_usual() -> None:
    """Ctrl-C raises KeyboardInterrupt again, for the command's own handling (flows._cli.run_command)."""
    if signal.getsignal(signal.SIGINT) is _starting_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
