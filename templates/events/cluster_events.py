#!/usr/bin/python3
"""Events from a database droplet to the Prefect server, with Debian's python3 alone.

`cluster_events.py spool on_role_change ROLE SCOPE`: Patroni's role-change callback.
It writes one Prefect event into the spool directory and returns at once: Patroni kills
a callback that is still running when the next one starts, and the server may be down
exactly when the cluster fails over. (A rename makes the file appear whole.)

`cluster_events.py send`: post every spooled event to `<api_url>/events`, oldest first,
deleting each once the server has it (lifeboat-events.service, started by a path unit
when the spool changes and by a timer every 30 s for what could not be sent).

Config: /etc/lifeboat/events.conf (JSON: api_url, stack, member).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

CONF = Path(os.environ.get("LIFEBOAT_EVENTS_CONF", "/etc/lifeboat/events.conf"))
SPOOL = Path(os.environ.get("LIFEBOAT_EVENTS_SPOOL", "/var/spool/lifeboat-events"))
TIMEOUT = 5  # seconds per POST: the timer tries again in 30 s


def event(conf: dict, action: str, role: str, scope: str) -> dict:
    stack, member = conf["stack"], conf["member"]
    now = datetime.datetime.now(datetime.UTC)
    return {
        "id": str(uuid.uuid4()),
        "occurred": now.isoformat().replace("+00:00", "Z"),
        "event": f"lifeboat.patroni.role.{role}",
        "resource": {
            "prefect.resource.id": f"lifeboat.member.{stack}.{member}",
            "prefect.resource.name": member,
            "lifeboat.stack": stack,
            "lifeboat.member": member,
        },
        "payload": {"action": action, "role": role, "scope": scope},
    }


def spool(conf: dict, action: str, role: str, scope: str) -> Path:
    ev = event(conf, action, role, scope)
    SPOOL.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Names sort by time of the event: sent oldest first.
    name = f"{ev['occurred']}-{ev['id']}.json"
    tmp = SPOOL / f".{name}.tmp"
    tmp.write_text(json.dumps(ev))
    tmp.rename(SPOOL / name)
    return SPOOL / name


def send(conf: dict) -> int:
    """Post the spooled events; returns how many are left (0: all sent)."""
    pending = sorted(p for p in SPOOL.glob("*.json")) if SPOOL.is_dir() else []
    api = (conf.get("api_url") or "").rstrip("/")
    if not api:
        if pending:
            print(f"{len(pending)} events spooled; no api_url configured", file=sys.stderr)
        return len(pending)
    for n, path in enumerate(pending):
        body = b"[" + path.read_bytes() + b"]"
        request = urllib.request.Request(
            f"{api}/events",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                answer.read()
        except (OSError, urllib.error.URLError) as exc:
            left = len(pending) - n
            print(f"{api}/events: {exc}; {left} events stay spooled", file=sys.stderr)
            return left
        path.unlink()
    return 0


def main(argv: list[str]) -> int:
    conf = json.loads(CONF.read_text())
    if argv[:1] == ["spool"] and len(argv) == 4:
        path = spool(conf, *argv[1:])
        print(f"spooled {path.name}")
        return 0
    if argv == ["send"]:
        send(conf)
        return 0  # what is left goes with the next timer tick
    print("usage: cluster_events.py spool ACTION ROLE SCOPE | send", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
