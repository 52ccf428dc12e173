"""Tags: create/list/get/delete and (un)tagging droplets; firewalls and load balancers that
select droplets by tag are re-applied whenever membership changes."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lab.api.deps import JsonBody, Lab, LabDep, base_url, ok, require
from lab.api.errors import not_found, unprocessable
from lab.api.pagination import paginate
from lab.api.store import Store, now
from lab.api.views import tag_view

router = APIRouter()
TAG_NAME = re.compile(r"^[a-zA-Z0-9_\-:]+$")


def check_tag_name(name: object) -> str:
    if not isinstance(name, str) or not TAG_NAME.match(name) or len(name) > 255:
        raise unprocessable(
            f"tag name {name!r} is invalid: use letters, numbers, colons, dashes and "
            "underscores, at most 255 characters"
        )
    return name


def ensure_tag(store: Store, name: str) -> str:
    """Create the tag if needed; returns its canonical spelling (tags are case-stable:
    the first spelling wins)."""
    check_tag_name(name)
    record = store.tags.setdefault(name.lower(), {"name": name, "created_at": now()})
    return record["name"]


def existing_tag(store: Store, name: str) -> str:
    record = store.tags.get(name.lower())
    if record is None:
        raise not_found()
    return record["name"]


@router.get("/v2/tags")
def list_tags(request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        names = sorted(t["name"] for t in lab.store.tags.values())
        tags = [tag_view(lab.store, n.lower(), base_url(request)) for n in names]
        return ok(paginate(request, "tags", tags))


@router.post("/v2/tags")
def create_tag(request: Request, body: JsonBody, lab: LabDep) -> JSONResponse:
    name = check_tag_name(require(body, "name", str))
    with lab.store.change() as s:
        canonical = ensure_tag(s, name)
        return ok({"tag": tag_view(s, canonical.lower(), base_url(request))}, 201)


@router.get("/v2/tags/{tag_id}")
def get_tag(tag_id: str, request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        existing_tag(lab.store, tag_id)
        return ok({"tag": tag_view(lab.store, tag_id.lower(), base_url(request))})


@router.delete("/v2/tags/{tag_id}", status_code=204)
def delete_tag(tag_id: str, lab: LabDep) -> Response:
    with lab.store.change() as s:
        name = existing_tag(s, tag_id)
        affected = [d["id"] for d in s.droplets.values() if name in d["tags"]]
        lab.ops.apply_load_balancers_for(affected, [name])  # queued: runs after this change
        for droplet in s.droplets.values():
            droplet["tags"] = [t for t in droplet["tags"] if t != name]
        for firewall in s.firewalls.values():
            _drop_tag(firewall, name)
            for rule in (firewall.get("inbound_rules") or []) + (
                firewall.get("outbound_rules") or []
            ):
                _drop_tag(rule.get("sources") or rule.get("destinations") or {}, name)
        del s.tags[name.lower()]
    lab.ops.apply_firewalls()
    return Response(status_code=204)


def _drop_tag(holder: dict, name: str) -> None:
    if holder.get("tags"):
        holder["tags"] = [t for t in holder["tags"] if t != name]


def _droplet_resources(s: Store, body: dict) -> list[dict]:
    resources = require(body, "resources", list)
    droplets = []
    for item in resources:
        if not isinstance(item, dict) or item.get("resource_type") != "droplet":
            raise unprocessable("Only droplets can be tagged in this lab (resource_type: droplet).")
        droplet = s.droplets.get(str(item.get("resource_id")))
        if droplet is None:
            raise not_found()
        droplets.append(droplet)
    return droplets


@router.post("/v2/tags/{tag_id}/resources", status_code=204)
def tag_resources(tag_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _retag(tag_id, body, lab, add=True)


@router.delete("/v2/tags/{tag_id}/resources", status_code=204)
def untag_resources(tag_id: str, body: JsonBody, lab: LabDep) -> Response:
    return _retag(tag_id, body, lab, add=False)


def _retag(tag_id: str, body: dict, lab: Lab, add: bool) -> Response:
    with lab.store.change() as s:
        name = existing_tag(s, tag_id)
        droplets = _droplet_resources(s, body)
        for droplet in droplets:
            if add and name not in droplet["tags"]:
                droplet["tags"].append(name)
            elif not add:
                droplet["tags"] = [t for t in droplet["tags"] if t != name]
    lab.ops.apply_firewalls()
    lab.ops.apply_load_balancers_for([], [name])
    return Response(status_code=204)
