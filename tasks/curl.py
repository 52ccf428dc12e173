"""HTTP checks from a droplet: the one way Lifeboat asks an HTTP endpoint that only the
droplets can reach (Patroni's REST API on the private network, a web droplet's own health
endpoint behind a firewall that admits the load balancer only, a unix socket). curl runs
on the droplet over SSH; the orchestrator gets the status and the body.

A check never fails on the answer: no answer at all (refused, timed out, no route) is
status 0, and the caller decides what any status means. Every word of the command is
quoted with shlex; nothing secret belongs in a URL or a header here (the endpoints asked
this way are open, or protected by where they listen).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from fabric import Connection

from tasks.hosts import run


@dataclass(frozen=True)
class Answer:
    status: int  # the HTTP status; 0 when nothing answered
    body: str

    def json(self) -> Any | None:
        """The body as JSON; None when nothing answered, or the body is empty or not JSON."""
        if self.status == 0 or not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def command(
    url: str,
    headers: dict[str, str] | None = None,
    max_time: float = 5,
    unix_socket: str | None = None,
    data_file: str | None = None,
) -> str:
    """curl, silent, bounded by `max_time` seconds, printing the body and then, on a line
    of its own, the status (000 when nothing answered). With `data_file` (a file on the
    droplet) a POST of its bytes: how a request that carries a secret is sent."""
    words = ["curl", "-s", "--max-time", f"{max_time:g}", "-w", "\\n%{http_code}"]
    if unix_socket:
        words += ["--unix-socket", unix_socket]
    if data_file:
        words += ["--data-binary", f"@{data_file}"]
    for name, value in (headers or {}).items():
        words += ["-H", f"{name}: {value}"]
    return shlex.join([*words, url])


def get(
    conn: Connection,
    url: str,
    headers: dict[str, str] | None = None,
    max_time: float = 5,
    timeout: int = 20,
    unix_socket: str | None = None,
) -> Answer:
    """GET `url` from the droplet `conn` is connected to. `timeout` bounds the SSH command
    (a little above `max_time`, which bounds curl itself)."""
    res = run(conn, command(url, headers, max_time, unix_socket), warn=True, timeout=timeout)
    return _answer(res.stdout)


def post(
    conn: Connection,
    url: str,
    data_file: str,
    headers: dict[str, str] | None = None,
    max_time: float = 60,
    timeout: int = 90,
) -> Answer:
    """POST the bytes of `data_file` (on the droplet) to `url` from the droplet."""
    cmd = command(url, headers, max_time, data_file=data_file)
    return _answer(run(conn, cmd, warn=True, timeout=timeout).stdout)


def _answer(stdout: str) -> Answer:
    body, _, code = stdout.rpartition("\n")
    return Answer(int(code) if code.strip().isdigit() else 0, body)
