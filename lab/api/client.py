"""A pydo client for the stand-in. azure-core refuses bearer tokens over plain http, so
the token goes in through a header policy instead (same `Authorization: Bearer` header)."""

from __future__ import annotations

from typing import Any

import pydo
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.policies import AzureKeyCredentialPolicy


def lab_client(url: str, token: str, **kwargs: Any) -> pydo.Client:
    policy = AzureKeyCredentialPolicy(AzureKeyCredential(token), "Authorization", prefix="Bearer")
    return pydo.Client(token=token, endpoint=url, authentication_policy=policy, **kwargs)
