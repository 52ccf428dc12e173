"""Notifications in the local cloud: Lifeboat's Prefect automations notify through a Prefect
notification block (a failed drill, a failover, a missing backup). In production the block
posts to Slack, e-mail or a webhook; in the lab it posts to lab/notify_receiver.py on
http://GATEWAY:NOTIFY_PORT/notify, which records each notification so tests can see it.

Files: RUN_DIR/notify.{pid,log} and RUN_DIR/notifications.jsonl (what was received), all
forgotten by `lab down`, which ends the receiver as it ends the release server: by the
--pid-file path in its argv.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab import config, notify_receiver, processes
from lifeboat.waiting import WaitTimeout, wait_until

PID_FILE = config.RUN_DIR / "notify.pid"
LOG_FILE = config.RUN_DIR / "notify.log"
FILE = config.RUN_DIR / "notifications.jsonl"


def url() -> str:
    return f"http://{config.GATEWAY}:{config.NOTIFY_PORT}/notify"


def received() -> list[dict[str, Any]]:
    """Every notification received, oldest first ([] when none)."""
    return notify_receiver.read(FILE)


def _pid() -> int | None:
    return processes.read_pid(PID_FILE, "lab.notify_receiver")


def is_up() -> bool:
    return _pid() is not None


def start() -> None:
    """Start the receiver; a running one is left as it is."""
    if _pid():
        return
    log = LOG_FILE.open("ab")
    with log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lab.notify_receiver",
                "--bind",
                str(config.GATEWAY),
                "--port",
                str(config.NOTIFY_PORT),
                "--file",
                str(FILE),
                "--pid-file",  # also the marker by which `lab down` finds it
                str(PID_FILE),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    PID_FILE.write_text(f"{proc.pid}\n")
    try:
        wait_until("the notification receiver", lambda: _serves(proc), timeout=30, every=0.1)
    except (WaitTimeout, RuntimeError) as e:
        processes.kill([proc.pid])
        raise RuntimeError(f"the notification receiver did not start; see {LOG_FILE}") from e


def _serves(proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the notification receiver exited; see {LOG_FILE}")
    try:
        with socket.create_connection((str(config.GATEWAY), config.NOTIFY_PORT), timeout=0.5):
            return True
    except OSError:
        return False
