"""Fixtures for end-to-end tests against the local cloud (`lifeboat lab up` first)."""

from __future__ import annotations

import time
from collections.abc import Callable

import paramiko
import pydo
import pytest
from fabric import Connection

from lab import lifecycle
from tasks import digitalocean


@pytest.fixture(scope="session")
def lab() -> dict:
    info = lifecycle.info()
    if not info.get("up"):
        pytest.fail("the local cloud is not up: run `lifeboat lab up` (make test does)")
    return info


@pytest.fixture(scope="session")
def do(lab: dict) -> pydo.Client:
    return digitalocean.client(lab["api_token"], lab["api_url"])


@pytest.fixture(scope="session")
def ssh_key_id(do: pydo.Client, lab: dict) -> int:
    """The lab's SSH key registered with the account (once; reused if already there)."""
    for key in do.ssh_keys.list(per_page=200)["ssh_keys"]:
        if key["public_key"] == lab["ssh_public_key"]:
            return key["id"]
    body = {"name": "e2e", "public_key": lab["ssh_public_key"]}
    return do.ssh_keys.create(body=body)["ssh_key"]["id"]


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, every: float = 0.5):
    """Poll until `check()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def ssh(lab: dict, host: str, timeout: float = 10) -> Connection:
    """Fabric connection to a droplet as root with the lab key. Lab droplets get fresh host
    keys at every create, so tests accept the first key they see."""
    conn = Connection(
        host,
        user="root",
        connect_timeout=timeout,
        connect_kwargs={
            "key_filename": lab["ssh_private_key"],
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    return conn


def public_ip(droplet: dict) -> str:
    return next(n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public")


def private_ip(droplet: dict) -> str:
    return next(n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "private")


@pytest.fixture(scope="session")
def lab_blocks(lab: dict, prefect_server: None) -> str:
    """The lab's credentials as Prefect blocks named "lab" (what `--credentials lab` loads)."""
    from lab.credentials import save_blocks

    return save_blocks(lab)
