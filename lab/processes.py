"""Processes of the lab's servers and containers, found and ended by what /proc says: pid
files can be gone after a crash, and this host's PID 1 reaps no orphans (zombies)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lifeboat.waiting import WaitTimeout, wait_until


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (reaping it first if it is our child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def find_pids(needles: list[str]) -> list[int]:
    """Processes whose argv contains any of `needles` (substring match on one argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        args = cmdline(int(entry.name))
        if any(n in a for a in args for n in needles):
            found.append(int(entry.name))
    return found


def kill(pids: list[int], timeout: float = 5.0, gentle: bool = True) -> None:
    """SIGTERM, then SIGKILL whatever is still there after `timeout`; with gentle=False,
    SIGKILL at once (a crashed lab's leftovers, a container's init)."""
    for sig in (signal.SIGTERM, signal.SIGKILL) if gentle else (signal.SIGKILL,):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(WaitTimeout):
            wait_until(
                f"processes {pids} to end",
                lambda: not any(alive(p) for p in pids),
                timeout,
                every=0.05,
            )
            return


def read_pid(pid_file: Path, needle: str) -> int | None:
    """The pid in `pid_file` if that process still runs with `needle` in its argv."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) and any(needle in a for a in cmdline(pid)) else None


def start_server(
    what: str, module: str, args: list[str], pid_file: Path, log_file: Path, port: int
) -> int:
    """Start `python -m module args --pid-file pid_file` in its own session (the pid file's
    path on its command line is the marker by which `lab down` finds it), record its PID,
    and wait until it accepts connections on the gateway's `port`. Returns the PID."""
    from lab import config

    with log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module, *args, "--pid-file", str(pid_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    pid_file.write_text(f"{proc.pid}\n")

    def serves() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited; see {log_file}")
        try:
            with socket.create_connection((str(config.GATEWAY), port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_until(f"the {what}", serves, timeout=30, every=0.1)
    except (WaitTimeout, RuntimeError) as e:
        kill([proc.pid])
        raise RuntimeError(f"the {what} did not start; see {log_file}") from e
    return proc.pid
