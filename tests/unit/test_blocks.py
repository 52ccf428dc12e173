"""Credential blocks and per-stack secrets offline: validation, reprs, names. Their round
trips through a real Prefect server: tests/integration/test_blocks.py."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from blocks import secrets
from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity

TOKEN = "dop_v1_" + "f" * 64
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3n6nB8Y3nHqk2m6lQ6m9kq7w8Yc1wE5gS2dQ0xkQ7A lb"


# --- offline: validation and reprs ----------------------------------------------------


def test_secrets_stay_out_of_reprs() -> None:
    do = DigitalOceanCredentials(token=TOKEN)
    spaces = SpacesCredentials(access_key="AKIDLIFEBOAT", secret_key="s3cr3t-key", region="nyc3")
    ssh = SSHIdentity(private_key="-----BEGIN OPENSSH PRIVATE KEY-----xyz", public_key=PUBLIC_KEY)
    text = " ".join(repr(b) + str(b) for b in (do, spaces, ssh))
    for secret in (TOKEN, "AKIDLIFEBOAT", "s3cr3t-key", "BEGIN OPENSSH"):
        assert secret not in text
    assert do.token.get_secret_value() == TOKEN


def test_defaults() -> None:
    assert DigitalOceanCredentials(token=TOKEN).api_url == "https://api.digitalocean.com"
    spaces = SpacesCredentials(access_key="a", secret_key="b", region="fra1")
    assert spaces.endpoint == "https://fra1.digitaloceanspaces.com" and spaces.ca_bundle is None
    lab = SpacesCredentials(
        access_key="a", secret_key="b", region="nyc3", endpoint="https://198.18.0.1:9443/"
    )
    assert lab.endpoint == "https://198.18.0.1:9443"


def test_bad_values_rejected_without_echoing_secrets() -> None:
    with pytest.raises(ValidationError, match="is not an http") as err:
        DigitalOceanCredentials(token=TOKEN, api_url="api.digitalocean.com")
    assert TOKEN not in str(err.value)
    with pytest.raises(ValidationError, match="OpenSSH public key"):
        SSHIdentity(private_key="k", public_key="not a key")
    with pytest.raises(ValidationError, match=r"known_hosts\['10.0.0.2'\]"):
        SSHIdentity(private_key="k", public_key=PUBLIC_KEY, known_hosts={"10.0.0.2": "junk"})


def test_new_password_is_random_and_safe() -> None:
    values = {secrets.new_password() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31}", value)


def test_secret_block_name() -> None:
    assert secrets.secret_block_name("shop", "haproxy-stats") == "lifeboat-shop-haproxy-stats"
    with pytest.raises(ValueError, match="lowercase letters"):
        secrets.secret_block_name("shop", "Bad_Name")


def test_the_token_never_goes_over_plain_http_unless_marked_as_the_local_cloud() -> None:
    with pytest.raises(ValueError, match="plain http: the API token would travel unencrypted"):
        DigitalOceanCredentials(token=TOKEN, api_url="http://api.example.test")
    lab = DigitalOceanCredentials(token=TOKEN, api_url="http://198.18.0.1:8088", local_cloud=True)
    assert lab.api_url == "http://198.18.0.1:8088"
    assert not DigitalOceanCredentials(token=TOKEN, api_url="https://api.example.test").local_cloud
