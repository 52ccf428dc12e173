"""Faults on demand, for drills and tests: partition a droplet, power it off hard, take
Spaces away. Droplets are named by id or name and looked up through the API stand-in."""

from __future__ import annotations

import pydo

from lab import nft, spaces
from lab.client import client as api_client
from lab.lifecycle import API_URL, TOKEN_FILE


def _client() -> pydo.Client:
    return api_client(TOKEN_FILE.read_text(), API_URL)


def find_droplet(name_or_id: str | int) -> dict:
    client = _client()
    if str(name_or_id).isdigit():
        return client.droplets.get(droplet_id=int(name_or_id))["droplet"]
    matches = [d for d in client.droplets.list(per_page=200)["droplets"] if d["name"] == name_or_id]
    if len(matches) != 1:
        raise LookupError(f"{len(matches)} droplets are named {name_or_id!r}; give an id instead")
    return matches[0]


def partition(name_or_id: str | int, peers: list[str | int] | None = None) -> dict:
    """Drop every packet from and to the droplet: it keeps running, cut off from everyone;
    with `peers` (droplets by name or id) only from and to those, while every other droplet,
    the load balancers and the host still reach it (e.g. a primary cut off from etcd whose
    clients still write to it). A new partition of the droplet replaces the last one."""
    droplet = find_droplet(name_or_id)
    addrs = None
    if peers is not None:
        others = [find_droplet(p) for p in peers]
        if any(o["id"] == droplet["id"] for o in others):
            raise ValueError(f"{droplet['name']} cannot be partitioned from itself")
        addrs = [a for o in others for a in nft.droplet_addrs(o)]
    nft.isolate(droplet["id"], nft.droplet_addrs(droplet), "partition", peers=addrs)
    return droplet


def heal(name_or_id: str | int) -> dict:
    droplet = find_droplet(name_or_id)
    nft.release(droplet["id"], "partition")
    return droplet


def power_off(name_or_id: str | int) -> dict:
    """A hard power-off through the API, as an operator (or a hypervisor fault) would."""
    droplet = find_droplet(name_or_id)
    _client().droplet_actions.post(droplet_id=droplet["id"], body={"type": "power_off"})
    return droplet


def power_on(name_or_id: str | int) -> dict:
    """Power a droplet on again through the API (its disk kept)."""
    droplet = find_droplet(name_or_id)
    _client().droplet_actions.post(droplet_id=droplet["id"], body={"type": "power_on"})
    return droplet


def s3_outage() -> None:
    spaces.outage()


def s3_restore() -> None:
    spaces.restore()
