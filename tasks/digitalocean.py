"""The DigitalOcean API client, through pydo.

pydo's default bearer-token policy (azure-core) refuses to send a token to a non-https URL,
which rules out the local cloud's plain-http stand-in; the same `Authorization: Bearer`
header through a key-credential policy works against both.
"""

from __future__ import annotations

from typing import Any

import pydo
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.policies import AzureKeyCredentialPolicy

DIGITALOCEAN_API = "https://api.digitalocean.com"


def client(token: str, url: str = DIGITALOCEAN_API, **kwargs: Any) -> pydo.Client:
    policy = AzureKeyCredentialPolicy(AzureKeyCredential(token), "Authorization", prefix="Bearer")
    return pydo.Client(token=token, endpoint=url, authentication_policy=policy, **kwargs)
