"""VPCs: one default per region (from lab.config, made on first use) plus custom ones."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lab.api import catalog
from lab.api.addresses import RESERVED_RANGES, free_vpc_range, parse_vpc_range
from lab.api.deps import JsonBody, Lab, LabDep, ok, optional, require
from lab.api.errors import ApiError, unprocessable
from lab.api.pagination import paginate
from lab.api.store import Store, new_uuid, now
from lab.api.views import get, vpc_members
from lab.config import DEFAULT_VPC_RANGES

router = APIRouter()
VPC_NAME = re.compile(r"^[a-zA-Z0-9\-.]+$")


def _record(name: str, region: str, ip_range: str, default: bool, description: str = "") -> dict:
    vpc_id = new_uuid()
    return {
        "id": vpc_id,
        "urn": f"do:vpc:{vpc_id}",
        "name": name,
        "description": description,
        "region": region,
        "ip_range": ip_range,
        "default": default,
        "created_at": now(),
    }


def default_vpc(store: Store, region: str) -> dict[str, Any]:
    """The region's default VPC, created with the lab's fixed range the first time (caller
    holds the lock)."""
    for vpc in store.vpcs.values():
        if vpc["region"] == region and vpc["default"]:
            return vpc
    vpc = _record(f"default-{region}", region, DEFAULT_VPC_RANGES[region], True)
    store.vpcs[vpc["id"]] = vpc
    return vpc


def ensure_defaults(store: Store) -> None:
    for region in DEFAULT_VPC_RANGES:
        default_vpc(store, region)


def _check_name(store: Store, name: str, vpc_id: str | None = None) -> None:
    if not VPC_NAME.match(name):
        raise unprocessable(
            f"VPC name {name!r} may only contain letters, numbers, dashes and periods."
        )
    if any(v["name"] == name and v["id"] != vpc_id for v in store.vpcs.values()):
        raise unprocessable(f"A VPC named {name!r} already exists.")


def _check_description(body: dict) -> str | None:
    description = optional(body, "description", str)
    if description is not None and len(description) > 255:
        raise unprocessable("description may be at most 255 characters.")
    return description


@router.get("/v2/vpcs")
def list_vpcs(request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.change() as s:
        ensure_defaults(s)
        vpcs = sorted(s.vpcs.values(), key=lambda v: v["created_at"])
        return ok(paginate(request, "vpcs", vpcs))


@router.post("/v2/vpcs")
def create_vpc(body: JsonBody, lab: LabDep) -> JSONResponse:
    name = require(body, "name", str)
    region = require(body, "region", str)
    if catalog.region(region) is None:
        raise unprocessable(
            f"Region {region!r} is not available; pick one of {catalog.region_slugs()}."
        )
    description = _check_description(body) or ""
    with lab.store.change() as s:
        _check_name(s, name)
        default_vpc(s, region)  # the region's default keeps the lab's fixed range
        taken = [ipaddress.ip_network(v["ip_range"]) for v in s.vpcs.values()]
        if body.get("ip_range") is None:
            ip_range = free_vpc_range(taken)
        else:
            net = parse_vpc_range(require(body, "ip_range", str))
            clash = next((t for t in taken + RESERVED_RANGES if net.overlaps(t)), None)
            if clash is not None:
                raise unprocessable(f"ip_range {net} overlaps {clash}, which is already in use.")
            ip_range = str(net)
        vpc = _record(name, region, ip_range, False, description)
        s.vpcs[vpc["id"]] = vpc
        return ok({"vpc": vpc}, 201)


@router.get("/v2/vpcs/{vpc_id}")
def get_vpc(vpc_id: str, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        return ok({"vpc": get(lab.store.vpcs, vpc_id)})


@router.put("/v2/vpcs/{vpc_id}")
def update_vpc(vpc_id: str, body: JsonBody, lab: LabDep) -> JSONResponse:
    require(body, "name", str)
    return _update(vpc_id, body, lab)


@router.patch("/v2/vpcs/{vpc_id}")
def patch_vpc(vpc_id: str, body: JsonBody, lab: LabDep) -> JSONResponse:
    return _update(vpc_id, body, lab)


def _update(vpc_id: str, body: dict, lab: Lab) -> JSONResponse:
    name = optional(body, "name", str)
    description = _check_description(body)
    make_default = optional(body, "default", bool)
    with lab.store.change() as s:
        vpc = get(s.vpcs, vpc_id)
        if make_default is False and vpc["default"]:
            raise unprocessable("The default VPC cannot be unset; make another VPC the default.")
        if name is not None:
            _check_name(s, name, vpc_id)
            vpc["name"] = name
        if description is not None:
            vpc["description"] = description
        if make_default:
            for other in s.vpcs.values():
                if other["region"] == vpc["region"]:
                    other["default"] = other["id"] == vpc_id
        return ok({"vpc": vpc})


@router.delete("/v2/vpcs/{vpc_id}", status_code=204)
def delete_vpc(vpc_id: str, lab: LabDep) -> Response:
    with lab.store.change() as s:
        vpc = get(s.vpcs, vpc_id)
        if vpc["default"]:
            raise ApiError(403, "Cannot delete the default VPC of a region.")
        if vpc_members(s, vpc_id):
            raise ApiError(403, "Cannot delete a VPC with members.")
        del s.vpcs[vpc_id]
    lab.ops.remove_vpc(vpc)
    return Response(status_code=204)


@router.get("/v2/vpcs/{vpc_id}/members")
def list_members(vpc_id: str, request: Request, lab: LabDep) -> JSONResponse:
    kind = request.query_params.get("resource_type")
    with lab.store.lock:
        get(lab.store.vpcs, vpc_id)
        members = vpc_members(lab.store, vpc_id)
        if kind:
            members = [m for m in members if m["urn"].split(":")[1] == kind.replace("_", "")]
        return ok(paginate(request, "members", members))
