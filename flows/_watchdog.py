"""Stop a command's temporary Prefect server when the command is gone, however it ended (kill -9 included).

    python flows/_watchdog.py FD      # started by flows._server, not by hand; standard library only

A command stops its temporary server as it exits, on Ctrl-C and on SIGTERM
too (an atexit handler sends the server SIGTERM and does not wait);
SIGKILL, or a crash of the interpreter, runs none of that, and the server
would keep its port and database for good. So each command that starts one
also starts this small process (about 10 MB), handing it the read end of a
pipe whose write end only the command holds, and writing `PID START_TIME`
lines for each server process it launches. When the command ends, for any
reason, the kernel closes its end and the read here returns: every listed
server still alive (the same PID with the same start time, so a reused PID
is never signalled) gets SIGTERM, then SIGKILL after GRACE_SECONDS. When all
listed servers have exited on their own (the normal stop), this process
exits too.

Why not PR_SET_PDEATHSIG: it fires when the *thread* that started the child
exits, not the process, and it exists only on Linux. A pipe works on every
POSIX system.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

GRACE_SECONDS = 5.0
POLL_SECONDS = 1.0


def start_time(pid: int) -> str:
    """The process's start time (Linux: /proc/PID/stat field 22), "" where unknown; "-" if there is no such
    process, or only its zombie (it has exited; its parent has not collected it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "-"
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return ""
    return "-" if fields[0] == b"Z" else fields[19].decode()


def alive(pid: int, started: str) -> bool:
    now = start_time(pid)
    return now != "-" and (not started or not now or now == started)


def stop(servers: dict[int, str]) -> None:
    """SIGTERM each live server, then SIGKILL what is left after GRACE_SECONDS."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, started in servers.items():
            if alive(pid, started):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(alive(p, s) for p, s in servers.items()):
            time.sleep(0.1)


def watch(fd: int) -> None:
    """Read server lines from `fd` until EOF (the command is gone), then stop them; return early once all exited."""
    servers: dict[int, str] = {}
    pending = b""
    while True:
        readable, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                stop(servers)
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                pid, _, started = line.decode().partition(" ")
                servers[int(pid)] = started.strip()
        elif servers and not any(alive(p, s) for p, s in servers.items()):
            return  # stopped by the command itself


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal's process group is the command's to handle
    watch(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
