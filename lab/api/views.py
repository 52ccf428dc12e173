"""Lookups and the derived parts of records: tag counts, tag-resolved members, and the
resolved objects handed to the machine layer."""

from __future__ import annotations

import copy
from typing import Any

from lab.api.errors import not_found
from lab.api.store import Store


def get(collection: dict[str, Any], key: str | int) -> dict[str, Any]:
    record = collection.get(str(key))
    if record is None:
        raise not_found()
    return record


def droplet_ids_tagged(store: Store, tags: list[str] | None) -> set[int]:
    wanted = set(tags or [])
    return {d["id"] for d in store.droplets.values() if wanted & set(d["tags"])}


def tag_view(store: Store, name: str, base_url: str) -> dict[str, Any]:
    tagged = [d for d in store.droplets.values() if name in d["tags"]]
    droplets: dict[str, Any] = {"count": len(tagged)}
    if tagged:
        last = max(tagged, key=lambda d: d["id"])
        droplets["last_tagged_uri"] = f"{base_url}/v2/droplets/{last['id']}"
    # Only droplets can be tagged here, so the totals are the droplet counts.
    resources: dict[str, Any] = {**droplets, "droplets": droplets}
    for kind in ("images", "volumes", "volume_snapshots", "databases"):
        resources[kind] = {"count": 0}
    return {"name": store.tags[name]["name"], "resources": resources}


def lb_targets(store: Store, lb: dict[str, Any]) -> list[dict[str, Any]]:
    if lb.get("tag"):
        ids = droplet_ids_tagged(store, [lb["tag"]])
    else:
        ids = set(lb.get("droplet_ids") or [])
    return [store.droplets[str(i)] for i in sorted(ids) if str(i) in store.droplets]


def lb_view(store: Store, lb: dict[str, Any]) -> dict[str, Any]:
    """A tag-based load balancer lists the droplets carrying its tag, as DO does."""
    out = copy.deepcopy(lb)
    out["droplet_ids"] = [d["id"] for d in lb_targets(store, lb)]
    return out


def _resolve_target(store: Store, target: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(target)
    ids = {i for i in target.get("droplet_ids") or [] if str(i) in store.droplets}
    out["droplet_ids"] = sorted(ids | droplet_ids_tagged(store, target.get("tags")))
    return out


def resolved_firewall(store: Store, firewall: dict[str, Any]) -> dict[str, Any]:
    """The firewall with every `droplet_ids` (its own and each rule's sources or
    destinations) widened to the existing droplets it selects, directly or by tag."""
    out = _resolve_target(store, firewall)
    for direction, side in (("inbound_rules", "sources"), ("outbound_rules", "destinations")):
        out[direction] = [
            {**rule, side: _resolve_target(store, rule.get(side) or {})}
            for rule in firewall.get(direction) or []
        ]
    return out


def vpc_members(store: Store, vpc_id: str) -> list[dict[str, Any]]:
    members = [
        {"urn": f"do:droplet:{d['id']}", "name": d["name"], "created_at": d["created_at"]}
        for d in store.droplets.values()
        if d.get("vpc_uuid") == vpc_id
    ]
    members += [
        {"urn": f"do:loadbalancer:{lb['id']}", "name": lb["name"], "created_at": lb["created_at"]}
        for lb in store.load_balancers.values()
        if lb.get("vpc_uuid") == vpc_id
    ]
    return members
