"""Test helpers: a recording stand-in for the machine layer and an in-thread server.

`RecordingCloud` implements `lab.cloud.Cloud` in memory, so runbooks and the API can be
exercised without containers."""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI


class RecordingCloud:
    """Records every call (deep copies of its arguments). Droplets are ready as soon as
    they are created unless `ready` is cleared; methods named in `failing` raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.ready = threading.Event()
        self.ready.set()
        self.failing: set[str] = set()
        self._lock = threading.Lock()

    def _record(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, copy.deepcopy(args)))
        if name in self.failing:
            raise RuntimeError(f"{name} failed (as the test asked)")

    def named(self, name: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [args for n, args in self.calls if n == name]

    def create_droplet(self, droplet: dict, ssh_public_keys: list[str], vpc: dict) -> None:
        self._record("create_droplet", droplet, ssh_public_keys, vpc)

    def droplet_ready(self, droplet: dict) -> bool:
        return self.ready.is_set()

    def power_off(self, droplet: dict) -> None:
        self._record("power_off", droplet)

    def shutdown(self, droplet: dict) -> None:
        self._record("shutdown", droplet)

    def power_on(self, droplet: dict) -> None:
        self._record("power_on", droplet)

    def destroy_droplet(self, droplet: dict) -> None:
        self._record("destroy_droplet", droplet)

    def apply_firewalls(self, droplets: list[dict], firewalls: list[dict]) -> None:
        self._record("apply_firewalls", droplets, firewalls)

    def apply_load_balancer(self, lb: dict, targets: list[dict]) -> None:
        self._record("apply_load_balancer", lb, targets)

    def remove_load_balancer(self, lb: dict) -> None:
        self._record("remove_load_balancer", lb)

    def remove_vpc(self, vpc: dict) -> None:
        self._record("remove_vpc", vpc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app: FastAPI, port: int | None = None) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
