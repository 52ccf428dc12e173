"""A pydo client for the lab's DigitalOcean API stand-in, for the lab's own tools (faults,
`lab status`). The lab imports no runbook code, so it does not borrow the orchestrator's
client (tasks/digitalocean.py); it needs the same one trick: pydo's default bearer-token
policy refuses to send a token to a plain-http URL, and a key-credential policy sending the
same `Authorization: Bearer` header does not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pydo
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.policies import AzureKeyCredentialPolicy


def client(token: str, url: str) -> pydo.Client:
    policy = AzureKeyCredentialPolicy(AzureKeyCredential(token), "Authorization", prefix="Bearer")
    return pydo.Client(token=token, endpoint=url, authentication_policy=policy)


def paged(list_call: Callable[..., dict], key: str, **params: Any) -> Iterator[dict]:
    """Every item of a paginated list endpoint."""
    page = 1
    while True:
        resp = list_call(per_page=200, page=page, **params)
        yield from resp.get(key, [])
        if not resp.get("links", {}).get("pages", {}).get("next"):
            return
        page += 1
