"""Credential blocks, the stack spec block and per-stack secrets, against a real
(ephemeral) Prefect server. Their validation and reprs: tests/unit/test_blocks.py."""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect.blocks.system import Secret

from blocks import secrets
from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity
from blocks.stack import StackSpec, StackSpecBlock

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "dop_v1_" + "f" * 64
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3n6nB8Y3nHqk2m6lQ6m9kq7w8Yc1wE5gS2dQ0xkQ7A lb"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1b4Yg1f6Yl2ZQ8Yx8yq1cVv2dWm3nK4p5r6s7t8u9"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- against the Prefect server ---------------------------------------------------------


def test_credentials_round_trip(prefect_server: None) -> None:
    name = unique("do")
    DigitalOceanCredentials(token=TOKEN, api_url="http://127.0.0.1:8080", local_cloud=True).save(
        name
    )
    loaded = DigitalOceanCredentials.load(name)
    assert loaded.token.get_secret_value() == TOKEN
    assert loaded.api_url == "http://127.0.0.1:8080"

    name = unique("spaces")
    SpacesCredentials(
        access_key="ak", secret_key="sk", region="nyc3", ca_bundle="/tmp/lab-ca.pem"
    ).save(name)
    spaces = SpacesCredentials.load(name)
    assert spaces.secret_key.get_secret_value() == "sk" and spaces.ca_bundle == "/tmp/lab-ca.pem"
    assert spaces.endpoint == "https://nyc3.digitaloceanspaces.com"


def test_ssh_identity_pins_host_keys(prefect_server: None) -> None:
    name = unique("ssh")
    identity = SSHIdentity(private_key="PRIVATE", public_key=PUBLIC_KEY)
    identity.save(name)
    pinned = SSHIdentity.load(name)
    assert pinned.known_hosts == {}
    pinned.known_hosts["198.18.0.10"] = HOST_KEY
    pinned.save(name, overwrite=True)
    again = SSHIdentity.load(name)
    assert again.known_hosts == {"198.18.0.10": HOST_KEY}
    assert again.private_key.get_secret_value() == "PRIVATE"


def test_stack_spec_block_round_trip(prefect_server: None) -> None:
    spec = StackSpec.from_yaml(EXAMPLES / "article.yaml")
    name = unique("article")
    StackSpecBlock(spec=spec).save(name)
    loaded = StackSpecBlock.load(name).spec
    assert loaded == spec
    assert [n.name for n in loaded.nodes()] == [n.name for n in spec.nodes()]


def test_stack_secret_created_once_and_reused(prefect_server: None) -> None:
    stack = unique("shop")
    calls: list[str] = []

    def generate() -> str:
        calls.append("x")
        return secrets.new_password()

    first = secrets.stack_secret(stack, secrets.POSTGRES_SUPERUSER, generate=generate)
    again = secrets.stack_secret(stack, secrets.POSTGRES_SUPERUSER, generate=generate)
    assert first == again and len(calls) == 1
    # kept in a Prefect Secret block under a predictable name
    block = Secret.load(f"lifeboat-{stack}-postgres-superuser")
    assert block.get() == first and first not in repr(block)
    # each name and each stack gets its own
    other_name = secrets.stack_secret(stack, secrets.POSTGRES_REPLICATION)
    other_stack = secrets.stack_secret(unique("blog"), secrets.POSTGRES_SUPERUSER)
    assert len({first, other_name, other_stack}) == 3


def test_cluster_secrets(prefect_server: None) -> None:
    stack = unique("shop")
    values = secrets.cluster_secrets(stack)
    assert set(values) == {
        "postgres-superuser",
        "postgres-replication",
        "postgres-rewind",
        "patroni-restapi",
        "haproxy-stats",
        "postgres-routing",
    }
    assert len(set(values.values())) == 6
    assert secrets.cluster_secrets(stack) == values


def test_stack_secret_race_keeps_the_first_writer(prefect_server: None) -> None:
    """Another run stores the secret between our load and our save: everyone ends up
    with the stored one."""
    stack = unique("race")
    block_name = f"lifeboat-{stack}-haproxy-stats"

    def generate_while_another_run_saves() -> str:
        Secret(value="TheirValue1").save(block_name)
        return "OurValue2"

    value = secrets.stack_secret(stack, "haproxy-stats", generate=generate_while_another_run_saves)
    assert value == "TheirValue1"
    assert Secret.load(block_name).get() == "TheirValue1"
