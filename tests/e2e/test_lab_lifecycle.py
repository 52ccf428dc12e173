"""`lab up` recovers from a lab left half-up; `lab down` leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pydo
import pytest

from lab import lifecycle
from lab.config import STATE_DIR
from tasks import digitalocean
from tests.e2e.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.lab, pytest.mark.lab_lifecycle]


def api_pid() -> int:
    return int(lifecycle.API_PID.read_text())


def client() -> pydo.Client:
    return digitalocean.client(lifecycle.TOKEN_FILE.read_text(), lifecycle.API_URL)


def machine_traces() -> list[str]:
    """Lab traces as the OS reports them, independent of the lab's own bookkeeping."""
    traces = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    traces += [f"netns {n}" for n in netns.split() if n.startswith("lbd-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(("lbpub", "lbv")) or (name.startswith("lv") and name[2:].isdigit()):
            traces.append(f"link {name}")
    mounts = Path("/proc/self/mounts").read_text()
    traces += [f"mount {m}" for m in mounts.split() if m.startswith(str(STATE_DIR))]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    traces += [f"nft {t}" for t in tables.splitlines() if "lifeboat" in t]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "lifeboat-lab" in argv or "moto_server" in argv or "systemd-nspawn" in argv:
                traces.append(f"process {proc.name}: {argv[:80]}")
    return traces


def test_state_survives_api_restart_then_up_recovers_and_down_leaves_nothing(ssh_key_id):
    do = client()
    body = {
        "name": "lifecycle-1",
        "region": "nyc3",
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "ssh_keys": [ssh_key_id],
        "tags": ["e2e-lifecycle"],
    }
    droplet = do.droplets.create(body=body)["droplet"]
    wait_for(
        "droplet active",
        lambda: do.droplets.get(droplet_id=droplet["id"])["droplet"]["status"] == "active",
    )

    # The stand-in keeps its state across a restart.
    os.kill(api_pid(), signal.SIGKILL)
    lifecycle._start_api()
    wait_for("API back", lambda: lifecycle.is_up(), 30)
    names = [d["name"] for d in client().droplets.list(tag_name="e2e-lifecycle")["droplets"]]
    assert names == ["lifecycle-1"]

    # A killed stand-in with a running droplet is a half-up lab: `up` clears it and starts
    # afresh, with no droplet left over from before.
    os.kill(api_pid(), signal.SIGKILL)
    assert not lifecycle.is_up()
    lifecycle.up()
    assert lifecycle.is_up()
    assert client().droplets.list()["droplets"] == []
    assert not any(t.startswith("netns") for t in machine_traces())

    # `down` leaves nothing, by the lab's count and by the machine's.
    assert lifecycle.down() == []
    assert machine_traces() == []

    lifecycle.up()  # leave the lab up for whatever runs after
