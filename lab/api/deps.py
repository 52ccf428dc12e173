"""What every route needs: the shared state and machine operations, and the JSON body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from lab.api.errors import ApiError, unprocessable
from lab.api.machine_ops import MachineOps
from lab.api.store import Store


@dataclass
class Lab:
    store: Store
    ops: MachineOps


def lab(request: Request) -> Lab:
    return request.app.state.lab


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "Unable to parse the request body as JSON.") from None
    if not isinstance(body, dict):
        raise unprocessable("The request body must be a JSON object.")
    return body


def require(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """A required field of the right JSON type, or 422 naming it."""
    if key not in body or body[key] is None:
        raise unprocessable(f"{what or key} is required.")
    return check_type(body[key], kind, what or key)


def optional(
    body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    if body.get(key) is None:
        return default
    return check_type(body[key], kind, key)


def check_type(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int in Python but not in JSON
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise unprocessable(f"{what} must be of type {names}.")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def int_list(body: dict[str, Any], key: str, required: bool = False) -> list[int]:
    values = require(body, key, list) if required else optional(body, key, list, [])
    for v in values:
        check_type(v, int, f"each of {key}")
    return values


def str_list(body: dict[str, Any], key: str, required: bool = False) -> list[str]:
    values = require(body, key, list) if required else optional(body, key, list, [])
    for v in values:
        check_type(v, str, f"each of {key}")
    return values


def ok(body: dict[str, Any], status: int = 200) -> JSONResponse:
    """Rendered at once, so call it while holding the store lock: the records it shows may
    change as soon as the lock is released."""
    return JSONResponse(body, status_code=status)


LabDep = Annotated[Lab, Depends(lab)]
JsonBody = Annotated[dict, Depends(json_body)]
