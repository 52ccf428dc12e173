"""SSH keys: /v2/account/keys, addressed by id or by fingerprint."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lab.api.deps import JsonBody, LabDep, ok, require
from lab.api.errors import not_found, unprocessable
from lab.api.pagination import paginate
from lab.api.store import Store

router = APIRouter()


def fingerprint(public_key: str) -> str:
    """MD5 of the key blob, as DO shows it; 422 for anything that is not `type base64 [comment]`."""
    parts = public_key.strip().split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
        kind_len = int.from_bytes(blob[:4], "big")
        valid = blob[4 : 4 + kind_len].decode() == parts[0]
    except (IndexError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid:
        raise unprocessable("Key invalid, key should be of the form `type key [comment]`")
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def find_key(store: Store, identifier: str | int) -> dict[str, Any] | None:
    """A key by id (int or digits) or by fingerprint."""
    if str(identifier) in store.ssh_keys:
        return store.ssh_keys[str(identifier)]
    return next((k for k in store.ssh_keys.values() if k["fingerprint"] == identifier), None)


def _get(store: Store, identifier: str) -> dict[str, Any]:
    key = find_key(store, identifier)
    if key is None:
        raise not_found()
    return key


@router.get("/v2/account/keys")
def list_keys(request: Request, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        keys = sorted(lab.store.ssh_keys.values(), key=lambda k: k["id"])
        return ok(paginate(request, "ssh_keys", keys))


@router.post("/v2/account/keys", status_code=201)
def create_key(body: JsonBody, lab: LabDep) -> JSONResponse:
    name = require(body, "name", str)
    public_key = require(body, "public_key", str).strip()
    fp = fingerprint(public_key)
    with lab.store.change() as s:
        if find_key(s, fp) is not None:
            raise unprocessable("SSH Key is already in use on your account")
        key = {
            "id": s.next_id("ssh_key"),
            "fingerprint": fp,
            "public_key": public_key,
            "name": name,
        }
        s.ssh_keys[str(key["id"])] = key
        return ok({"ssh_key": key}, 201)


@router.get("/v2/account/keys/{identifier}")
def get_key(identifier: str, lab: LabDep) -> JSONResponse:
    with lab.store.lock:
        return ok({"ssh_key": _get(lab.store, identifier)})


@router.put("/v2/account/keys/{identifier}")
def update_key(identifier: str, body: JsonBody, lab: LabDep) -> JSONResponse:
    name = require(body, "name", str)
    with lab.store.change() as s:
        key = _get(s, identifier)
        key["name"] = name
        return ok({"ssh_key": key})


@router.delete("/v2/account/keys/{identifier}", status_code=204)
def delete_key(identifier: str, lab: LabDep) -> Response:
    with lab.store.change() as s:
        key = _get(s, identifier)
        del s.ssh_keys[str(key["id"])]
    return Response(status_code=204)
