"""DigitalOcean resources of a stack, through pydo. The API is the inventory: everything a
stack owns carries the tag `lifeboat:<stack>`, so a rerun finds what exists by tag and
creates only what is missing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pydo
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from blocks.credentials import DigitalOceanCredentials
from blocks.stack import StackSpec
from tasks import digitalocean
from tasks.hosts import Host


class CloudError(RuntimeError):
    """The cloud refused or failed a request; the message says what to change."""


def api(creds: DigitalOceanCredentials) -> pydo.Client:
    return digitalocean.client(creds.token.get_secret_value(), creds.api_url)


def check_access(do: pydo.Client, block_name: str) -> dict:
    """The first call of every runbook: a bad token stops it before anything is created."""
    try:
        return do.account.get()["account"]
    except ClientAuthenticationError:
        raise CloudError(
            "DigitalOcean rejected the API token (401 Unauthorized): put a valid token in the "
            f"DigitalOcean credentials block {block_name!r} and rerun; nothing was created"
        ) from None
    except HttpResponseError as exc:
        raise CloudError(f"DigitalOcean API error: {_reason(exc)}") from None


def _reason(exc: HttpResponseError) -> str:
    """The API's own message, never the request (whose headers carry the token)."""
    try:
        body = exc.response.json()
        return f"{exc.status_code} {body.get('id', '')}: {body.get('message', '')}"
    except Exception:  # noqa: BLE001 - a non-JSON error body
        return f"{exc.status_code} {exc.reason}"


def paged(list_call: Callable[..., dict], key: str, **params: Any) -> Iterator[dict]:
    """Every item of a paginated list endpoint."""
    page = 1
    while True:
        resp = list_call(per_page=200, page=page, **params)
        yield from resp.get(key, [])
        if not resp.get("links", {}).get("pages", {}).get("next"):
            return
        page += 1


def stack_droplets(do: pydo.Client, spec: StackSpec) -> list[dict]:
    return list(paged(do.droplets.list, "droplets", tag_name=spec.stack_tag))


def inventory(do: pydo.Client, spec: StackSpec) -> list[Host]:
    """The stack's droplets as Hosts, in the spec's order, with roles and group from the
    spec (the source of truth; tags mirror it). Only droplets the spec plans are returned."""
    by_name = {d["name"]: d for d in stack_droplets(do, spec)}
    hosts = []
    for node in spec.nodes():
        droplet = by_name.get(node.name)
        if droplet is None or droplet["status"] != "active":
            continue
        host = Host.from_droplet(droplet)
        hosts.append(
            Host(
                host.name, host.droplet_id, host.public_ip, host.private_ip, node.roles, node.group
            )
        )
    return hosts


def wait_active(
    do: pydo.Client, spec: StackSpec, names: set[str], timeout: float = 600
) -> list[dict]:
    """Wait until every named droplet of the stack is active; fail naming the stragglers."""
    deadline = time.monotonic() + timeout
    while True:
        found = {d["name"]: d for d in stack_droplets(do, spec) if d["name"] in names}
        waiting = sorted(n for n in names if found.get(n, {}).get("status") != "active")
        if not waiting:
            return list(found.values())
        if time.monotonic() > deadline:
            raise CloudError(f"droplets not active after {timeout:.0f}s: {', '.join(waiting)}")
        time.sleep(2)
