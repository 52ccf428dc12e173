"""What the cluster and status runbooks share: the stack's hosts, SSH sessions whose repr
never shows the key, secrets that print as stars, and pinned host keys saved back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fabric import Connection
from pydantic import SecretStr

from blocks.credentials import DigitalOceanCredentials, SSHIdentity
from blocks.stack import StackSpec
from tasks import droplets
from tasks.hosts import SSH, Host


class ClusterError(RuntimeError):
    pass


class Remote:
    """SSH to the stack's droplets from Prefect tasks, one connection per droplet for the
    whole run, shared by the tasks (channels are independent; a per-host lock keeps two
    threads from driving one Connection at once). Fewer logins also sidesteps a lab
    defect: a login that arrives while a droplet's idle user@0.service is being stopped
    waits ~100 s (systemd cannot kill the container's cgroup and waits for the timeout)."""

    def __init__(self, private_key: str, pins: dict[str, str]) -> None:
        self._ssh = SSH(private_key, dict(pins))
        self._initial = dict(pins)
        self._conns: dict[str, Connection] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:  # Prefect may show task arguments: never the key
        return f"Remote({len(self._ssh.pins)} pinned host keys)"

    @contextmanager
    def connect(self, host: Host) -> Iterator[Connection]:
        with self._guard:
            lock = self._locks.setdefault(host.name, threading.RLock())
        with lock:
            conn = self._conns.get(host.name)
            transport = conn.client.get_transport() if conn is not None else None
            if transport is None or not transport.is_active():
                conn = self._conns[host.name] = self._ssh.connect(host)
            yield conn

    def close(self) -> None:
        with self._guard:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()

    @property
    def new_pins(self) -> dict[str, str]:
        return {k: v for k, v in self._ssh.pins.items() if self._initial.get(k) != v}


def load(spec: StackSpec, credentials: str, complete: bool = True) -> tuple[list[Host], Remote]:
    """The stack's active droplets (by tag, through the API) and SSH to them. With
    `complete`, every droplet the spec plans must be there."""
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    droplets.check_access(do, credentials)
    hosts = droplets.inventory(do, spec)
    missing = sorted({n.name for n in spec.nodes()} - {h.name for h in hosts})
    if complete and missing:
        raise ClusterError(
            f"droplets of stack {spec.name} missing or not active: {', '.join(missing)}; "
            "run the provision runbook first (`lifeboat up`)"
        )
    ident = SSHIdentity.load(credentials)
    return hosts, Remote(ident.private_key.get_secret_value(), ident.known_hosts)


def save_pins(credentials: str, remote: Remote) -> int:
    """Store host keys first seen in this run in the SSH identity block (reloaded first, so
    pins another run saved meanwhile are kept)."""
    remote.close()
    new = remote.new_pins
    if not new:
        return 0
    ident = SSHIdentity.load(credentials)
    ident.known_hosts = {**ident.known_hosts, **new}
    ident.save(credentials, overwrite=True)
    return len(new)


class Secrets:
    """The stack's generated passwords; repr and str show no values."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = {k: SecretStr(v) for k, v in values.items()}

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self._values))})"

    def reveal(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self._values.items()}

    def __getitem__(self, key: str) -> str:
        return self._values[key].get_secret_value()
