"""Notifications in the local cloud: Lifeboat's Prefect automations notify through a Prefect
notification block (a failed drill, a failover, a missing backup). In production the block
posts to Slack, e-mail or a webhook; in the lab it posts to lab/notify_receiver.py on
http://GATEWAY:NOTIFY_PORT/notify, which records each notification so tests can see it.

Files: RUN_DIR/notify.{pid,log} and RUN_DIR/notifications.jsonl (what was received), all
forgotten by `lab down`, which ends the receiver as it ends the release server: by the
--pid-file path in its argv.
"""

from __future__ import annotations

from typing import Any

from lab import config, notify_receiver, processes

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
    processes.start_server(
        "notification receiver",
        "lab.notify_receiver",
        ["--bind", str(config.GATEWAY), "--port", str(config.NOTIFY_PORT), "--file", str(FILE)],
        PID_FILE,
        LOG_FILE,
        config.NOTIFY_PORT,
    )
