"""Prefect blocks holding what Lifeboat needs to reach DigitalOcean, Spaces and droplets.

Secrets are SecretStr: they print as '**********' in reprs, logs and the UI.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")


def _url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


class DigitalOceanCredentials(Block):
    """A DigitalOcean API token; `api_url` points at the lab's stand-in in tests. The token
    never travels over plain http unless `local_cloud` marks the endpoint as the local
    cloud's stand-in (on a private address of this machine)."""

    _block_type_name = "Lifeboat DigitalOcean Credentials"

    token: SecretStr
    api_url: str = "https://api.digitalocean.com"
    local_cloud: bool = Field(
        default=False, description="The endpoint is the local cloud's: plain http allowed."
    )

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return _url(value)

    @model_validator(mode="after")
    def _no_token_in_clear(self) -> DigitalOceanCredentials:
        if self.api_url.startswith("http://") and not self.local_cloud:
            raise ValueError(
                f"api_url {self.api_url} is plain http: the API token would travel "
                "unencrypted. Use https, or set local_cloud to true for the local cloud's "
                "stand-in"
            )
        return self


class SpacesCredentials(Block):
    """Spaces (S3) keys. `endpoint` defaults to the region's Spaces endpoint; `ca_bundle` is
    a CA file path for endpoints with a private CA (the lab)."""

    _block_type_name = "Lifeboat Spaces Credentials"

    access_key: SecretStr
    secret_key: SecretStr
    region: str
    endpoint: str = ""
    ca_bundle: str | None = None

    @model_validator(mode="after")
    def _endpoint(self) -> SpacesCredentials:
        if not self.endpoint:
            self.endpoint = f"https://{self.region}.digitaloceanspaces.com"
        self.endpoint = _url(self.endpoint)
        return self


class SSHIdentity(Block):
    """The orchestrator's SSH key, and droplet host keys pinned at first contact
    (`known_hosts` maps a droplet address to its `<type> <base64>` host key)."""

    _block_type_name = "Lifeboat SSH Identity"

    private_key: SecretStr
    public_key: str
    known_hosts: dict[str, str] = Field(default_factory=dict)

    @field_validator("public_key")
    @classmethod
    def _public(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(_KEY_TYPES) or len(value.split()) < 2:
            raise ValueError("public_key must be an OpenSSH public key ('ssh-ed25519 AAAA...')")
        return value

    @field_validator("known_hosts")
    @classmethod
    def _known(cls, value: dict[str, str]) -> dict[str, str]:
        for host, key in value.items():
            if len(key.split()) != 2 or not key.startswith(_KEY_TYPES):
                raise ValueError(f"known_hosts[{host!r}] must be '<type> <base64>'")
        return value
