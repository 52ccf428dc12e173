"""Droplets: create (one, or several with `names`), list (by tag or name), get, destroy
(one, or by tag). The machine work runs in the background; the POST answers at once."""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lab.api import addresses, catalog
from lab.api.deps import JsonBody, Lab, LabDep, base_url, ok, optional, str_list
from lab.api.errors import not_found, unprocessable
from lab.api.pagination import paginate
from lab.api.routes_catalog import DROPLET_LIMIT
from lab.api.routes_ssh_keys import find_key
from lab.api.routes_tags import check_tag_name, ensure_tag
from lab.api.routes_vpcs import default_vpc
from lab.api.store import Store, now
from lab.api.views import get

router = APIRouter()
DROPLET_NAME = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
MAX_NAMES = 10
MAX_USER_DATA = 64 * 1024


def _names(body: dict) -> list[str]:
    if body.get("names") is not None:
        names = str_list(body, "names")
        if not 1 <= len(names) <= MAX_NAMES:
            raise unprocessable(f"names must hold between 1 and {MAX_NAMES} names.")
    elif isinstance(body.get("name"), str):
        names = [body["name"]]
    else:
        raise unprocessable("name is required (or names, for several droplets).")
    for name in names:
        if len(name) > 255 or not DROPLET_NAME.match(name):
            raise unprocessable(f"Droplet name {name!r} is not a valid hostname.")
    return names


def _public_keys(s: Store, body: dict) -> list[str]:
    refs = optional(body, "ssh_keys", list, [])
    keys = []
    for ref in refs:
        key = find_key(s, ref) if isinstance(ref, (str, int)) else None
        if key is None:
            raise unprocessable(f"SSH key {ref!r} was not found in your account.")
        keys.append(key["public_key"])
    return keys


def _used_addresses(s: Store) -> set[str]:
    used: set[str] = set()
    for droplet in list(s.droplets.values()) + list(s.destroying_droplets.values()):
        used |= {n["ip_address"] for n in droplet["networks"]["v4"]}
    return used


def _networks(s: Store, vpc: dict, public: bool, used: set[str]) -> dict[str, Any]:
    v4 = []
    if public:
        ip = addresses.public_droplet_address(used)
        used.add(ip)
        v4.append(
            {
                "ip_address": ip,
                "netmask": addresses.PUBLIC_NETMASK,
                "gateway": addresses.PUBLIC_GATEWAY,
                "type": "public",
            }
        )
    private = addresses.private_address(vpc["ip_range"], used)
    used.add(private)
    # DO gives private interfaces no gateway: the lab host's VPC address is not a route out.
    v4.append(
        {
            "ip_address": private,
            "netmask": addresses.private_netmask(vpc["ip_range"]),
            "type": "private",
        }
    )
    return {"v4": v4, "v6": []}


@router.post("/v2/droplets", status_code=202)
def create_droplets(request: Request, body: JsonBody, lab: LabDep) -> JSONResponse:
    names = _names(body)
    region_slug = optional(body, "region", str, catalog.region_slugs()[0])
    region = catalog.region(region_slug)
    if region is None:
        raise unprocessable(
            f"Region {region_slug!r} is not available; pick one of {catalog.region_slugs()}."
        )
    size_slug = optional(body, "size", str)
    size = catalog.size(size_slug) if size_slug else None
    if size is None:
        raise unprocessable(f"You specified an invalid size for Droplet creation: {size_slug!r}.")
    image_ref = body.get("image")
    image = catalog.image(image_ref) if isinstance(image_ref, (str, int)) else None
    if image is None:
        raise unprocessable(f"You specified an invalid image for Droplet creation: {image_ref!r}.")
    tags = [check_tag_name(t) for t in str_list(body, "tags")]
    user_data = optional(body, "user_data", str)
    if user_data is not None and len(user_data.encode()) > MAX_USER_DATA:
        raise unprocessable("user_data may not exceed 64 KiB.")
    public = optional(body, "public_networking", bool, True)
    if not public and optional(body, "ipv6", bool, False):
        raise unprocessable("ipv6 must be false when public_networking is false.")
    monitoring = optional(body, "monitoring", bool, False)
    vpc_uuid = optional(body, "vpc_uuid", str)

    created: list[tuple[dict[str, Any], int]] = []
    with lab.store.change() as s:
        keys = _public_keys(s, body)
        if vpc_uuid is None:
            vpc = default_vpc(s, region_slug)
        else:
            vpc = s.vpcs.get(vpc_uuid)
            if vpc is None or vpc["region"] != region_slug:
                raise unprocessable(f"VPC {vpc_uuid!r} was not found in region {region_slug}.")
        if len(s.droplets) + len(names) > DROPLET_LIMIT:
            raise unprocessable(
                f"creating {len(names)} droplet(s) will exceed your droplet limit "
                f"of {DROPLET_LIMIT}"
            )
        used = _used_addresses(s)
        # Allocate every address before recording anything: a full pool fails the request whole.
        networks = [_networks(s, vpc, public, used) for _ in names]
        canonical_tags = [ensure_tag(s, t) for t in dict.fromkeys(tags)]
        for name, net in zip(names, networks, strict=True):
            droplet = {
                "id": s.next_id("droplet"),
                "name": name,
                "memory": size["memory"],
                "vcpus": size["vcpus"],
                "disk": size["disk"],
                "disk_info": copy.deepcopy(size["disk_info"]),
                "locked": False,
                "status": "new",
                "kernel": None,
                "created_at": now(),
                "features": ["private_networking"] + (["monitoring"] if monitoring else []),
                "backup_ids": [],
                "next_backup_window": None,
                "snapshot_ids": [],
                "image": copy.deepcopy(image),
                "volume_ids": [],
                "size": copy.deepcopy(size),
                "size_slug": size_slug,
                "networks": net,
                "region": copy.deepcopy(region),
                "tags": list(canonical_tags),
                "vpc_uuid": vpc["id"],
            }
            s.droplets[str(droplet["id"])] = droplet
            action = lab.ops.new_action(droplet, "create")
            created.append((droplet, action["id"]))
        links = {
            "actions": [
                {"id": a, "rel": "create", "href": f"{base_url(request)}/v2/actions/{a}"}
                for _, a in created
            ]
        }
        if "names" in body:
            response = ok({"droplets": [d for d, _ in created], "links": links}, 202)
        else:
            response = ok({"droplet": created[0][0], "links": links}, 202)
    for droplet, action_id in created:
        lab.ops.build_droplet(droplet["id"], action_id, keys, user_data)
    return response


@router.get("/v2/droplets")
def list_droplets(request: Request, lab: LabDep) -> JSONResponse:
    q = request.query_params
    tag, name = q.get("tag_name"), q.get("name")
    if tag and (name or q.get("type")):
        raise unprocessable("tag_name can not be combined with name or type.")
    with lab.store.lock:
        droplets = sorted(lab.store.droplets.values(), key=lambda d: d["id"])
        if tag:  # tags are case-stable: match the canonical spelling
            tag = lab.store.tags.get(tag.lower(), {}).get("name", tag)
            droplets = [d for d in droplets if tag in d["tags"]]
        if name:
            droplets = [d for d in droplets if d["name"].lower() == name.lower()]
        if q.get("type") == "gpus":  # the lab has no GPU sizes
            droplets = []
        return ok(paginate(request, "droplets", droplets))


@router.get("/v2/droplets/{droplet_id}")
def get_droplet(droplet_id: int, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        return ok({"droplet": get(lab.store.droplets, droplet_id)})


@router.get("/v2/droplets/{droplet_id}/firewalls")
def list_droplet_firewalls(droplet_id: int, request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        droplet = get(lab.store.droplets, droplet_id)
        firewalls = [
            f
            for f in lab.store.firewalls.values()
            if droplet_id in (f.get("droplet_ids") or [])
            or set(droplet["tags"]) & set(f.get("tags") or [])
        ]
        return ok(paginate(request, "firewalls", firewalls))


def destroy(s: Store, lab: Lab, droplet_id: int) -> None:
    """Take a droplet out of every firewall, load balancer and rule, then tear it down in
    the background (caller holds the lock)."""
    droplet = s.droplets.pop(str(droplet_id))
    s.destroying_droplets[str(droplet_id)] = droplet
    lab.ops.forget(droplet_id)
    for action in s.actions.values():
        if action["resource_id"] == droplet_id and action["status"] == "in-progress":
            action["status"], action["completed_at"] = "errored", now()
    lb_ids = []
    for lb in s.load_balancers.values():
        if droplet_id in (lb.get("droplet_ids") or []) or lb.get("tag") in droplet["tags"]:
            lb_ids.append(lb["id"])
            lb["droplet_ids"] = [i for i in lb.get("droplet_ids") or [] if i != droplet_id]
    for firewall in s.firewalls.values():
        _drop_droplet(firewall, droplet_id)
        for rule in (firewall.get("inbound_rules") or []) + (firewall.get("outbound_rules") or []):
            _drop_droplet(rule.get("sources") or rule.get("destinations") or {}, droplet_id)
    lab.ops.destroy_droplet(droplet, lb_ids)


def _drop_droplet(holder: dict, droplet_id: int) -> None:
    if holder.get("droplet_ids"):
        holder["droplet_ids"] = [i for i in holder["droplet_ids"] if i != droplet_id]


@router.delete("/v2/droplets/{droplet_id}", status_code=204)
def destroy_droplet(droplet_id: int, lab: LabDep) -> Response:
    with lab.store.change() as s:
        get(s.droplets, droplet_id)
        destroy(s, lab, droplet_id)
    return Response(status_code=204)


@router.delete("/v2/droplets", status_code=204)
def destroy_by_tag(request: Request, lab: LabDep) -> Response:
    tag = request.query_params.get("tag_name")
    if not tag:
        raise unprocessable("tag_name is required.")
    with lab.store.change() as s:
        if tag.lower() not in s.tags:
            raise not_found()
        tag = s.tags[tag.lower()]["name"]
        for droplet_id in [d["id"] for d in s.droplets.values() if tag in d["tags"]]:
            destroy(s, lab, droplet_id)
    return Response(status_code=204)
