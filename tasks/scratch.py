"""The scratch droplet a restore drill restores into: created beside the stack (same
region, image and VPC, a database droplet's size), never one of it.

It carries its own tag (`spec.drill_tag`), not the stack's: the stack's inventory,
firewall and load balancer never see it. Its own firewall lets SSH in from the admin
addresses only. Everything is found by that tag or name, so a drill can remove what a
killed one left before it starts, and `destroy` of the stack removes it too."""

from __future__ import annotations

import pydo

from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks.droplets import CloudError, call, ensure_ssh_key, ensure_vpc, open_outbound, paged
from tasks.hosts import Host


def droplets(do: pydo.Client, spec: StackSpec) -> list[dict]:
    return list(paged(do.droplets.list, "droplets", tag_name=spec.drill_tag))


def remove(do: pydo.Client, spec: StackSpec, timeout: float = 180) -> list[str]:
    """Destroy every scratch droplet of the stack and wait until none is listed. Returns
    their names (empty when there was none). Idempotent."""
    found = droplets(do, spec)
    if not found:
        return []
    call(
        "destroying the drill's scratch droplet",
        do.droplets.destroy_by_tag,
        tag_name=spec.drill_tag,
    )
    try:
        wait_until("the scratch droplet to be gone", lambda: not droplets(do, spec), timeout)
    except WaitTimeout as e:
        raise CloudError(
            f"scratch droplet {spec.drill_droplet_name} still listed {timeout:.0f}s after destroy"
        ) from e
    return [d["name"] for d in found]


def _ensure_firewall(do: pydo.Client, spec: StackSpec) -> None:
    want = {
        "name": spec.drill_firewall_name,
        "tags": [spec.drill_tag],
        "droplet_ids": [],
        "inbound_rules": [
            {"protocol": "tcp", "ports": "22", "sources": {"addresses": spec.admin_cidrs}}
        ],
        "outbound_rules": open_outbound(),
    }
    if not any(f["name"] == want["name"] for f in paged(do.firewalls.list, "firewalls")):
        call(f"creating firewall {want['name']}", do.firewalls.create, body=want)


def create(do: pydo.Client, spec: StackSpec, public_key: str, timeout: float = 600) -> Host:
    """A new scratch droplet, active, as a Host with the postgres role. Tags are created on
    first use; the firewall exists before the droplet does, so it is never open."""
    if droplets(do, spec):
        raise CloudError(
            f"a scratch droplet of stack {spec.name} exists: remove it first (scratch.remove)"
        )
    if not any(t["name"] == spec.drill_tag for t in paged(do.tags.list, "tags")):
        call(f"creating tag {spec.drill_tag}", do.tags.create, body={"name": spec.drill_tag})
    _ensure_firewall(do, spec)
    key_id, _ = ensure_ssh_key(do, spec, public_key)
    vpc, _ = ensure_vpc(do, spec)
    size = spec.nodes_with("postgres")[0].size
    body = {
        "name": spec.drill_droplet_name,
        "region": spec.region,
        "size": size,
        "image": spec.image,
        "ssh_keys": [key_id],
        "vpc_uuid": vpc["id"],
        "tags": [spec.drill_tag],
        "monitoring": False,
    }
    created = call("creating the drill's scratch droplet", do.droplets.create, body=body)
    droplet_id = created["droplet"]["id"]

    def active() -> dict:
        d = call("reading the scratch droplet", do.droplets.get, droplet_id=droplet_id)["droplet"]
        if d["status"] != "active":
            raise NotYet(d["status"])
        return d

    try:
        droplet = wait_until("the scratch droplet to be active", active, timeout, every=2)
    except WaitTimeout as e:
        raise CloudError(f"scratch droplet not active after {timeout:.0f}s: {e.last}") from e
    host = Host.from_droplet(droplet)
    return Host(host.name, host.droplet_id, host.public_ip, host.private_ip, ("postgres",))
