"""The droplet's event program (templates/events/cluster_events.py) under Debian's python3,
against the session's real Prefect server: Patroni's callback spools at once, `send`
posts the spool; a server that cannot be reached leaves the events spooled, and the next
`send` delivers them. Its systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, wait_until
from tasks import events
from tasks.render import TEMPLATES
from tests.integration.postgres import free_port
from tests.integration.test_templates import tool

PROGRAM = TEMPLATES / "events" / "cluster_events.py"
DEBIAN_PYTHON = "/usr/bin/python3"


def _program(tmp: Path, api_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp / "events.conf"
    conf.write_text(json.dumps({"api_url": api_url, "stack": "t1", "member": "t1-db-1"}))
    env = {"LIFEBOAT_EVENTS_CONF": str(conf), "LIFEBOAT_EVENTS_SPOOL": str(tmp / "spool")}
    return subprocess.run(
        [DEBIAN_PYTHON, str(PROGRAM), *args], env=env, capture_output=True, text=True, timeout=60
    )


def _events_named(api_url: str, name: str, since: float) -> list[dict]:
    from prefect.client.orchestration import get_client

    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": _iso(since)}}}
    with get_client(sync_client=True) as client:
        answer = client.request("POST", "/events/filter", json=body)
    return answer.json()["events"]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def test_a_role_change_is_spooled_then_sent(prefect_server, tmp_path: Path) -> None:
    since = time.time() - 5
    t0 = time.monotonic()
    done = _program(tmp_path, prefect_server.api_url, "spool", "on_role_change", "primary", "t1")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 5  # Patroni's callback must be quick
    spooled = list((tmp_path / "spool").glob("*.json"))
    assert len(spooled) == 1
    assert _program(tmp_path, prefect_server.api_url, "send").returncode == 0
    assert list((tmp_path / "spool").glob("*.json")) == []

    def arrived() -> list[dict]:
        found = _events_named(prefect_server.api_url, "lifeboat.patroni.role.primary", since)
        found = [e for e in found if e["resource"].get("lifeboat.member") == "t1-db-1"]
        if not found:
            raise NotYet("not on the server yet")
        return found

    (ev,) = wait_until("the event on the server", arrived, timeout=30)
    assert ev["resource"]["lifeboat.stack"] == "t1"
    assert ev["payload"] == {"action": "on_role_change", "role": "primary", "scope": "t1"}


def test_a_server_out_of_reach_keeps_the_events_for_later(prefect_server, tmp_path: Path) -> None:
    since = time.time() - 5
    down = f"http://127.0.0.1:{free_port()}/api"
    for role in ("replica", "primary"):
        _program(tmp_path, down, "spool", "on_role_change", role, "t1")
    failed = _program(tmp_path, down, "send")
    assert failed.returncode == 0  # the timer tries again; a failed unit would only be noise
    assert "2 events stay spooled" in failed.stderr
    assert len(list((tmp_path / "spool").glob("*.json"))) == 2
    assert _program(tmp_path, prefect_server.api_url, "send").returncode == 0
    assert list((tmp_path / "spool").glob("*.json")) == []

    def both() -> bool:
        names = {
            e["event"]
            for name in ("lifeboat.patroni.role.replica", "lifeboat.patroni.role.primary")
            for e in _events_named(prefect_server.api_url, name, since)
        }
        if len(names) < 2:
            raise NotYet(f"only {names}")
        return True

    wait_until("both spooled events on the server", both, timeout=30)


def test_without_an_api_url_events_stay_spooled(tmp_path: Path) -> None:
    _program(tmp_path, None, "spool", "on_role_change", "primary", "t1")
    done = _program(tmp_path, None, "send")
    assert done.returncode == 0 and "no api_url configured" in done.stderr
    assert len(list((tmp_path / "spool").glob("*.json"))) == 1


def test_bad_usage_says_how(tmp_path: Path) -> None:
    done = _program(tmp_path, None, "spool", "primary")
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.parametrize("example", ["compact", "article"])
def test_event_units_pass_systemd_analyze_verify(example: str, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    spec = StackSpec.from_yaml(f"examples/{example}.yaml")
    rendered = events.files(spec, f"{spec.name}-db-1")
    conf = json.loads(rendered["events/events.conf.j2"])
    assert conf == {
        "api_url": spec.events.api_url,
        "stack": spec.name,
        "member": f"{spec.name}-db-1",
    }
    units = []
    for template, content in rendered.items():
        if ".service" in template or ".path" in template or ".timer" in template:
            unit = tmp_path / Path(template).name.removesuffix(".j2")
            unit.write_text(content)
            units.append(str(unit))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # The program lives on the droplet, not on this host.
    allowed = "cluster_events.py"
    assert [line for line in lines if allowed not in line] == [], lines
