"""Cloud firewalls. Every change queues a full `apply_firewalls` on the machine; the
firewall shows `waiting` until it has run, then `succeeded` or `failed`."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lab.api.deps import (
    JsonBody,
    Lab,
    LabDep,
    check_type,
    int_list,
    ok,
    optional,
    require,
    str_list,
)
from lab.api.errors import unprocessable
from lab.api.pagination import paginate
from lab.api.routes_tags import existing_tag
from lab.api.store import Store, new_uuid, now
from lab.api.views import get

router = APIRouter()
FIREWALL_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.\-]+$")
PROTOCOLS = ("tcp", "udp", "icmp")
SIDES = {"inbound_rules": "sources", "outbound_rules": "destinations"}


def _ports(protocol: str, raw: Any) -> str:
    if protocol == "icmp":
        return "0"  # DO always reports "0" for ICMP
    ports = check_type(raw, str, "ports") if raw is not None else ""
    if ports in ("0", "all"):
        return "0"
    bounds = ports.split("-")
    if not (1 <= len(bounds) <= 2 and all(b.isdigit() and 1 <= int(b) <= 65535 for b in bounds)):
        raise unprocessable(
            f"ports {ports!r} must be a port, a range like 8000-9000, or 0 for all."
        )
    if len(bounds) == 2 and int(bounds[0]) > int(bounds[1]):
        raise unprocessable(f"ports range {ports!r} is reversed.")
    return ports


def _target(s: Store, raw: Any, side: str) -> dict[str, Any]:
    """A rule's sources or destinations: every referenced droplet, LB and tag must exist."""
    if not isinstance(raw, dict):
        raise unprocessable(f"{side} is required for each rule.")
    target: dict[str, Any] = {}
    addresses = str_list(raw, "addresses")
    for address in addresses:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise unprocessable(f"{address!r} is not an IP address or CIDR.") from None
    if addresses:
        target["addresses"] = addresses
    if ids := int_list(raw, "droplet_ids"):
        _check_droplets(s, ids)
        target["droplet_ids"] = ids
    if uids := str_list(raw, "load_balancer_uids"):
        missing = [u for u in uids if u not in s.load_balancers]
        if missing:
            raise unprocessable(f"Load balancer(s) {missing} not found.")
        target["load_balancer_uids"] = uids
    if str_list(raw, "kubernetes_ids"):
        raise unprocessable("The lab has no Kubernetes clusters.")
    if tags := str_list(raw, "tags"):
        target["tags"] = [_tag(s, t) for t in tags]
    if not target:
        raise unprocessable(
            f"Each rule's {side} needs addresses, droplet_ids, load_balancer_uids or tags."
        )
    return target


def _tag(s: Store, name: str) -> str:
    if name.lower() not in s.tags:
        raise unprocessable(f"Tag {name!r} does not exist; tags must exist to be referenced.")
    return existing_tag(s, name)


def _check_droplets(s: Store, ids: list[int]) -> None:
    missing = [i for i in ids if str(i) not in s.droplets]
    if missing:
        raise unprocessable(f"Droplet(s) {missing} not found.")


def _rules(s: Store, body: dict, required: bool) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for key, side in SIDES.items():
        rules = []
        for raw in optional(body, key, list, []):
            if not isinstance(raw, dict):
                raise unprocessable(f"Each of {key} must be an object.")
            protocol = require(raw, "protocol", str)
            if protocol not in PROTOCOLS:
                raise unprocessable(f"protocol {protocol!r} must be one of {list(PROTOCOLS)}.")
            rules.append(
                {
                    "protocol": protocol,
                    "ports": _ports(protocol, raw.get("ports")),
                    side: _target(s, raw.get(side), side),
                }
            )
        out[key] = rules
    if required and not any(body.get(k) for k in SIDES):
        raise unprocessable("A firewall needs inbound_rules or outbound_rules.")
    return out


def _fields(s: Store, body: dict) -> dict[str, Any]:
    """Everything a create or update sets, validated before anything changes."""
    name = require(body, "name", str)
    if not FIREWALL_NAME.match(name):
        raise unprocessable(
            f"Firewall name {name!r} must start with a letter or digit and hold only "
            "letters, digits, '.' and '-'."
        )
    droplet_ids = int_list(body, "droplet_ids")
    _check_droplets(s, droplet_ids)
    tags = [_tag(s, t) for t in str_list(body, "tags")]
    return {
        "name": name,
        **_rules(s, body, required=True),
        "droplet_ids": droplet_ids,
        "tags": tags,
    }


@router.get("/v2/firewalls")
def list_firewalls(request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        firewalls = sorted(lab.store.firewalls.values(), key=lambda f: f["created_at"])
        return ok(paginate(request, "firewalls", firewalls))


@router.post("/v2/firewalls", status_code=202)
def create_firewall(body: JsonBody, lab: LabDep) -> JSONResponse:
    with lab.store.change() as s:
        firewall = {
            "id": new_uuid(),
            "status": "waiting",
            "created_at": now(),
            "pending_changes": [],
            **_fields(s, body),
        }
        s.firewalls[firewall["id"]] = firewall
        lab.ops.apply_firewalls()
        return ok({"firewall": firewall}, 202)


@router.get("/v2/firewalls/{firewall_id}")
def get_firewall(firewall_id: str, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        return ok({"firewall": get(lab.store.firewalls, firewall_id)})


@router.put("/v2/firewalls/{firewall_id}")
def update_firewall(firewall_id: str, body: JsonBody, lab: LabDep) -> JSONResponse:
    with lab.store.change() as s:
        firewall = get(s.firewalls, firewall_id)
        firewall.update(_fields(s, body))
        lab.ops.apply_firewalls()
        return ok({"firewall": firewall})


@router.delete("/v2/firewalls/{firewall_id}", status_code=204)
def delete_firewall(firewall_id: str, lab: LabDep) -> Response:
    with lab.store.change() as s:
        get(s.firewalls, firewall_id)
        del s.firewalls[firewall_id]
        lab.ops.apply_firewalls()
    return Response(status_code=204)


def _edit(firewall_id: str, lab: Lab, edit) -> Response:  # type: ignore[no-untyped-def]
    with lab.store.change() as s:
        firewall = get(s.firewalls, firewall_id)
        edit(s, firewall)
        lab.ops.apply_firewalls()
    return Response(status_code=204)


def _merge(current: list, extra: list, add: bool) -> list:
    if add:
        return current + [x for x in extra if x not in current]
    return [x for x in current if x not in extra]


@router.post("/v2/firewalls/{firewall_id}/droplets", status_code=204)
def add_droplets(firewall_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_droplets(firewall_id, body, lab, add=True)


@router.delete("/v2/firewalls/{firewall_id}/droplets", status_code=204)
def remove_droplets(firewall_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_droplets(firewall_id, body, lab, add=False)


def _edit_droplets(firewall_id: str, body: dict, lab: Lab, add: bool) -> Response:
    ids = int_list(body, "droplet_ids", required=True)

    def edit(s: Store, firewall: dict) -> None:
        if add:
            _check_droplets(s, ids)
        firewall["droplet_ids"] = _merge(firewall.get("droplet_ids") or [], ids, add)

    return _edit(firewall_id, lab, edit)


@router.post("/v2/firewalls/{firewall_id}/tags", status_code=204)
def add_tags(firewall_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_tags(firewall_id, body, lab, add=True)


@router.delete("/v2/firewalls/{firewall_id}/tags", status_code=204)
def remove_tags(firewall_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_tags(firewall_id, body, lab, add=False)


def _edit_tags(firewall_id: str, body: dict, lab: Lab, add: bool) -> Response:
    names = str_list(body, "tags", required=True)

    def edit(s: Store, firewall: dict) -> None:
        tags = [_tag(s, t) for t in names] if add else names
        firewall["tags"] = _merge(firewall.get("tags") or [], tags, add)

    return _edit(firewall_id, lab, edit)


@router.post("/v2/firewalls/{firewall_id}/rules", status_code=204)
def add_rules(firewall_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_rules(firewall_id, body, lab, add=True)


@router.delete("/v2/firewalls/{firewall_id}/rules", status_code=204)
def remove_rules(firewall_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_rules(firewall_id, body, lab, add=False)


def _edit_rules(firewall_id: str, body: dict, lab: Lab, add: bool) -> Response:
    def edit(s: Store, firewall: dict) -> None:
        rules = _rules(s, body, required=True)
        for key in SIDES:
            firewall[key] = _merge(firewall.get(key) or [], rules[key], add)

    return _edit(firewall_id, lab, edit)
