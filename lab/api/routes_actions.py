"""Droplet actions (power and reboot) and the account-wide action list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lab.api.deps import JsonBody, LabDep, ok, require
from lab.api.errors import not_found, unprocessable
from lab.api.pagination import paginate
from lab.api.views import get

router = APIRouter()
# What the machine layer can do; other DO action types (resize, snapshot, ...) get a 422.
POWER_ACTIONS = ("power_off", "shutdown", "power_on", "reboot", "power_cycle")


@router.post("/v2/droplets/{droplet_id}/actions", status_code=201)
def post_action(droplet_id: int, body: JsonBody, lab: LabDep) -> JSONResponse:
    kind = require(body, "type", str)
    if kind not in POWER_ACTIONS:
        raise unprocessable(
            f"Action type {kind!r} is not supported here; use one of {list(POWER_ACTIONS)}."
        )
    with lab.store.change() as s:
        droplet = get(s.droplets, droplet_id)
        if any(
            a["resource_id"] == droplet_id and a["status"] == "in-progress"
            for a in s.actions.values()
        ):
            raise unprocessable("Droplet already has a pending event.")
        action = lab.ops.new_action(droplet, kind)
        response = ok({"action": action}, 201)
    lab.ops.power(droplet_id, action["id"], kind)
    return response


@router.get("/v2/droplets/{droplet_id}/actions")
def list_droplet_actions(droplet_id: int, request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        get(lab.store.droplets, droplet_id)
        actions = [a for a in lab.store.actions.values() if a["resource_id"] == droplet_id]
        # newest first, as DO lists them
        return ok(paginate(request, "actions", sorted(actions, key=lambda a: -a["id"])))


@router.get("/v2/droplets/{droplet_id}/actions/{action_id}")
def get_droplet_action(droplet_id: int, action_id: int, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        get(lab.store.droplets, droplet_id)
        action = get(lab.store.actions, action_id)
        if action["resource_id"] != droplet_id:
            raise not_found()
        return ok({"action": action})


@router.get("/v2/actions")
def list_actions(request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        actions = sorted(lab.store.actions.values(), key=lambda a: -a["id"])
        return ok(paginate(request, "actions", actions))


@router.get("/v2/actions/{action_id}")
def get_action(action_id: int, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        return ok({"action": get(lab.store.actions, action_id)})
