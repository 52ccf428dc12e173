"""Load balancers: HAProxy on the machine, one address each from the lab's LB pool.
Status is `new` until the machine has applied it, then `active` (or `errored`)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lab.api import addresses, catalog
from lab.api.deps import JsonBody, Lab, LabDep, int_list, ok, optional, require
from lab.api.errors import unprocessable
from lab.api.pagination import paginate
from lab.api.routes_tags import check_tag_name, existing_tag
from lab.api.routes_vpcs import default_vpc
from lab.api.store import Store, new_uuid, now
from lab.api.views import get, lb_view
from lab.loadbalancers import DEFAULT_HEALTH_CHECK

router = APIRouter()
ENTRY_PROTOCOLS = ("http", "https", "http2", "http3", "tcp", "udp")
TARGET_PROTOCOLS = ("http", "https", "http2", "tcp", "udp")
HEALTH_DEFAULTS: dict[str, Any] = DEFAULT_HEALTH_CHECK
# Bounds DO enforces on health check timings and thresholds.
HEALTH_BOUNDS = {
    "check_interval_seconds": (3, 300),
    "response_timeout_seconds": (3, 300),
    "healthy_threshold": (2, 10),
    "unhealthy_threshold": (2, 10),
}


def _port(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise unprocessable(f"{what} must be a port number (1-65535), got {value!r}.")
    return value


def _forwarding_rules(body: dict) -> list[dict[str, Any]]:
    rules = require(body, "forwarding_rules", list)
    if not rules:
        raise unprocessable("forwarding_rules must hold at least one rule.")
    return [_forwarding_rule(r) for r in rules]


def _forwarding_rule(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise unprocessable("Each forwarding rule must be an object.")
    entry, target = raw.get("entry_protocol"), raw.get("target_protocol")
    if entry not in ENTRY_PROTOCOLS:
        raise unprocessable(f"entry_protocol {entry!r} must be one of {list(ENTRY_PROTOCOLS)}.")
    if target not in TARGET_PROTOCOLS:
        raise unprocessable(f"target_protocol {target!r} must be one of {list(TARGET_PROTOCOLS)}.")
    if (entry == "udp") != (target == "udp"):
        raise unprocessable("udp must be used as both entry_protocol and target_protocol.")
    rule = {
        "entry_protocol": entry,
        "entry_port": _port(raw.get("entry_port"), "entry_port"),
        "target_protocol": target,
        "target_port": _port(raw.get("target_port"), "target_port"),
        "certificate_id": optional(raw, "certificate_id", str, ""),
        "tls_passthrough": optional(raw, "tls_passthrough", bool, False),
    }
    if rule["certificate_id"]:
        raise unprocessable("The lab has no certificates: use tls_passthrough or plain tcp/http.")
    return rule


def _health_check(body: dict, current: dict[str, Any] | None) -> dict[str, Any]:
    check = dict(current or HEALTH_DEFAULTS)
    raw = optional(body, "health_check", dict)
    if raw is None:
        return check
    for key, value in raw.items():
        if key not in HEALTH_DEFAULTS:
            raise unprocessable(f"health_check has no field {key!r}.")
        check[key] = value
    if check["protocol"] not in ("http", "https", "tcp"):
        raise unprocessable(
            f"health_check protocol {check['protocol']!r} must be http, https or tcp."
        )
    _port(check["port"], "health_check port")
    if not isinstance(check["path"], str) or not check["path"].startswith("/"):
        raise unprocessable("health_check path must start with '/'.")
    for key, (low, high) in HEALTH_BOUNDS.items():
        value = check[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise unprocessable(f"health_check {key} must be between {low} and {high}.")
    return check


def _sticky(body: dict, current: dict[str, Any] | None) -> dict[str, Any]:
    raw = optional(body, "sticky_sessions", dict)
    if raw is None:
        return current or {"type": "none"}
    if raw.get("type", "none") == "none":
        return {"type": "none"}
    if raw.get("type") != "cookies":
        raise unprocessable("sticky_sessions type must be cookies or none.")
    return {
        "type": "cookies",
        "cookie_name": optional(raw, "cookie_name", str, "DO-LB"),
        "cookie_ttl_seconds": optional(raw, "cookie_ttl_seconds", int, 300),
    }


def _targets(s: Store, body: dict) -> tuple[list[int], str | None]:
    """`droplet_ids` or `tag`, never both; referenced droplets and the tag must exist."""
    if body.get("droplet_ids") is not None and body.get("tag"):
        raise unprocessable("Specify either droplet_ids or tag, not both.")
    if body.get("tag"):
        name = check_tag_name(body["tag"])
        if name.lower() not in s.tags:
            raise unprocessable(f"Tag {name!r} does not exist.")
        return [], existing_tag(s, name)
    ids = int_list(body, "droplet_ids")
    missing = [i for i in ids if str(i) not in s.droplets]
    if missing:
        raise unprocessable(f"Droplet(s) {missing} not found.")
    return ids, None


def _settings(s: Store, body: dict, current: dict[str, Any] | None) -> dict[str, Any]:
    """Fields a create or update (PUT replaces them) sets, validated before any change."""
    name = require(body, "name", str)
    region_slug = require(body, "region", str)
    region = catalog.region(region_slug)
    if region is None:
        raise unprocessable(
            f"Region {region_slug!r} is not available; pick one of {catalog.region_slugs()}."
        )
    if current is not None and current["region"]["slug"] != region_slug:
        raise unprocessable("A load balancer cannot move to another region.")
    droplet_ids, tag = _targets(s, body)
    vpc_uuid = optional(body, "vpc_uuid", str)
    if current is not None:
        if vpc_uuid not in (None, current["vpc_uuid"]):
            raise unprocessable("A load balancer cannot move to another VPC.")
        vpc_uuid = current["vpc_uuid"]
    elif vpc_uuid is None:
        vpc_uuid = default_vpc(s, region_slug)["id"]
    elif (vpc := s.vpcs.get(vpc_uuid)) is None or vpc["region"] != region_slug:
        raise unprocessable(f"VPC {vpc_uuid!r} was not found in region {region_slug}.")
    for droplet_id in droplet_ids:
        if s.droplets[str(droplet_id)]["vpc_uuid"] != vpc_uuid:
            raise unprocessable(f"Droplet {droplet_id} is not in the load balancer's VPC.")
    fields: dict[str, Any] = {
        "name": name,
        "region": copy.deepcopy(region),
        "vpc_uuid": vpc_uuid,
        "forwarding_rules": _forwarding_rules(body),
        "health_check": _health_check(body, current and current["health_check"]),
        "sticky_sessions": _sticky(body, current and current["sticky_sessions"]),
        "redirect_http_to_https": optional(body, "redirect_http_to_https", bool, False),
        "enable_proxy_protocol": optional(body, "enable_proxy_protocol", bool, False),
        "enable_backend_keepalive": optional(body, "enable_backend_keepalive", bool, False),
        "http_idle_timeout_seconds": optional(body, "http_idle_timeout_seconds", int, 60),
        "droplet_ids": droplet_ids,
        "tag": tag or "",  # DO shows an empty tag on load balancers that list droplets
    }
    return fields


def _used_ips(s: Store) -> set[str]:
    lbs = list(s.load_balancers.values()) + list(s.destroying_load_balancers.values())
    return {lb["ip"] for lb in lbs}


@router.post("/v2/load_balancers", status_code=202)
def create_lb(body: JsonBody, lab: LabDep) -> JSONResponse:
    if body.get("network", "EXTERNAL") != "EXTERNAL" or body.get("type", "REGIONAL") != "REGIONAL":
        raise unprocessable("The lab has external regional load balancers only.")
    with lab.store.change() as s:
        fields = _settings(s, body, None)
        lb_id = new_uuid()
        lb = {
            "id": lb_id,
            "ip": addresses.load_balancer_address(_used_ips(s)),
            "ipv6": "",
            "size_unit": optional(body, "size_unit", int, 1),
            "algorithm": "round_robin",
            "status": "new",
            "created_at": now(),
            "network": "EXTERNAL",
            "network_stack": "IPV4",
            "type": "REGIONAL",
            "firewall": {"allow": [], "deny": []},
            "disable_lets_encrypt_dns_records": False,
            "tls_cipher_policy": "DEFAULT",
            **fields,
        }
        s.load_balancers[lb_id] = lb
        response = ok({"load_balancer": lb_view(s, lb)}, 202)
    lab.ops.apply_load_balancer(lb_id)
    return response


@router.get("/v2/load_balancers")
def list_lbs(request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        lbs = sorted(lab.store.load_balancers.values(), key=lambda lb: lb["created_at"])
        return ok(paginate(request, "load_balancers", [lb_view(lab.store, lb) for lb in lbs]))


@router.get("/v2/load_balancers/{lb_id}")
def get_lb(lb_id: str, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        return ok({"load_balancer": lb_view(lab.store, get(lab.store.load_balancers, lb_id))})


@router.put("/v2/load_balancers/{lb_id}")
def update_lb(lb_id: str, body: JsonBody, lab: LabDep) -> JSONResponse:
    with lab.store.change() as s:
        lb = get(s.load_balancers, lb_id)
        fields = _settings(s, body, lb)
        lb.update(fields)
        response = ok({"load_balancer": lb_view(s, lb)})
    lab.ops.apply_load_balancer(lb_id)
    return response


@router.delete("/v2/load_balancers/{lb_id}", status_code=204)
def delete_lb(lb_id: str, lab: LabDep) -> Response:
    with lab.store.change() as s:
        lb = get(s.load_balancers, lb_id)
        del s.load_balancers[lb_id]
        s.destroying_load_balancers[lb_id] = lb  # keeps its address until HAProxy is gone
        for firewall in s.firewalls.values():
            for rule in (firewall.get("inbound_rules") or []) + (
                firewall.get("outbound_rules") or []
            ):
                target = rule.get("sources") or rule.get("destinations") or {}
                if lb_id in target.get("load_balancer_uids", []):
                    target["load_balancer_uids"].remove(lb_id)
    lab.ops.remove_load_balancer(lb)
    lab.ops.apply_firewalls()
    return Response(status_code=204)


@router.post("/v2/load_balancers/{lb_id}/droplets", status_code=204)
def add_droplets(lb_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_droplets(lb_id, body, lab, add=True)


@router.delete("/v2/load_balancers/{lb_id}/droplets", status_code=204)
def remove_droplets(lb_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_droplets(lb_id, body, lab, add=False)


def _edit_droplets(lb_id: str, body: dict, lab: Lab, add: bool) -> Response:
    ids = int_list(body, "droplet_ids", required=True)
    with lab.store.change() as s:
        lb = get(s.load_balancers, lb_id)
        if lb.get("tag"):
            raise unprocessable("This load balancer selects droplets by tag; tag them instead.")
        if add:
            missing = [i for i in ids if str(i) not in s.droplets]
            if missing:
                raise unprocessable(f"Droplet(s) {missing} not found.")
            lb["droplet_ids"] = lb["droplet_ids"] + [i for i in ids if i not in lb["droplet_ids"]]
        else:
            lb["droplet_ids"] = [i for i in lb["droplet_ids"] if i not in ids]
    lab.ops.apply_load_balancer(lb_id)
    return Response(status_code=204)


@router.post("/v2/load_balancers/{lb_id}/forwarding_rules", status_code=204)
def add_rules(lb_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_rules(lb_id, body, lab, add=True)


@router.delete("/v2/load_balancers/{lb_id}/forwarding_rules", status_code=204)
def remove_rules(lb_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _edit_rules(lb_id, body, lab, add=False)


def _edit_rules(lb_id: str, body: dict, lab: Lab, add: bool) -> Response:
    rules = _forwarding_rules(body)
    with lab.store.change() as s:
        lb = get(s.load_balancers, lb_id)
        current = lb["forwarding_rules"]
        if add:
            updated = current + [r for r in rules if r not in current]
        else:
            updated = [r for r in current if r not in rules]
        if not updated:
            raise unprocessable("A load balancer needs at least one forwarding rule.")
        lb["forwarding_rules"] = updated
    lab.ops.apply_load_balancer(lb_id)
    return Response(status_code=204)
