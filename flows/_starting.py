"""Ctrl-C at any moment of a command ends it with one line and exit 130, never a traceback.

    if __name__ == "__main__":          # the entry point's first lines
        command_begins()                # (and the working directory off the import path)
    ...                                 # imports of torch, Prefect and the stages
    if __name__ == "__main__":
        exit_quickly(main())            # main's body runs inside flows._cli.run_command

Python's own handler raises KeyboardInterrupt wherever the interpreter
happens to be, and the command would end in a traceback of some library's
module. So a command's Ctrl-C goes through three phases:

- starting (imports, before `run_command`): `interrupted`, then SystemExit(130);
  the atexit handlers run, so a temporary Prefect server already started is
  stopped (its watchdog would stop it anyway), and nothing else is written yet;
- the command's body, inside `flows._cli.run_command`: Python's
  KeyboardInterrupt, which the body cleans up after (the run is marked
  failed, a resume hint is printed), as in any library call;
- once the first interrupt has been reported, and while the process exits
  (`exit_quickly`): the process ends at once with 130 (`os._exit`), so a
  second Ctrl-C cannot break Prefect's exit-time flush into a traceback;
  from the atexit callbacks on, Ctrl-C is ignored.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from types import FrameType

INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command ended by Ctrl-C


def _starting_interrupted(signum: int, frame: FrameType | None) -> None:
    print("interrupted", file=sys.stderr)
    raise SystemExit(INTERRUPTED)


def _ending_interrupted(signum: int, frame: FrameType | None) -> None:
    os._exit(INTERRUPTED)  # already said, or exiting anyway; the temporary server's watchdog stops it


def command_begins() -> None:
    """An entry point's first lines, before any other import: no module from the working directory
    (flows/_import_path.py), and Ctrl-C quiet while torch and Prefect load."""
    from flows._import_path import working_directory_off_path

    working_directory_off_path()
    quiet_interrupt_while_starting()


def quiet_interrupt_while_starting() -> None:
    """Until the command's body runs, Ctrl-C prints `interrupted` and exits 130, without a traceback."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the user chose to ignore it
        signal.signal(signal.SIGINT, _starting_interrupted)


def starting() -> bool:
    """Whether this process is a command that has not reached its body yet (`quiet_interrupt_while_starting`)."""
    return signal.getsignal(signal.SIGINT) is _starting_interrupted


def interrupts_as_usual() -> None:
    """Ctrl-C raises KeyboardInterrupt again, for the body's own handling (flows._cli.run_command)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupts_while_starting() -> None:
    """Back to the starting phase: a command's early body (reading its config) is done, imports follow."""
    signal.signal(signal.SIGINT, _starting_interrupted)


def interrupts_end_the_process() -> None:
    """From here a Ctrl-C ends the process at once with 130: after the first was reported, or while exiting.

    Called only in a command's own process (`starting()` was true for it).
    From the atexit callbacks on (after threading's shutdown, where Prefect
    flushes its logs), Ctrl-C is ignored: the interpreter's own finalization
    resets Python's handlers to the default action, and a Ctrl-C landing
    there would end the process by the signal instead of with 130; what is
    left (asking a temporary server to stop, without waiting) is quick.
    """
    signal.signal(signal.SIGINT, _ending_interrupted)
    if not _IGNORE_AT_THE_END["registered"]:
        _IGNORE_AT_THE_END["registered"] = True
        atexit.register(_ignore_interrupts)  # the last registered: the first atexit callback to run


_IGNORE_AT_THE_END = {"registered": False}


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
