"""The stack context: what it shows (never a secret), how Prefect records it as a subflow
parameter (a placeholder), handing it down; the spec's resource names and WordPress source.
(Missing blocks: tests/integration/test_context_blocks.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from pydantic import SecretStr, ValidationError

from blocks.credentials import SpacesCredentials, SSHIdentity
from blocks.stack import StackSpec
from tasks import context, droplets
from tasks.context import ClusterError, StackContext, opened

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nNOT-A-REAL-KEY\n-----END OPENSSH PRIVATE KEY-----\n"
SPACES_SECRET = "spaces-secret-DO-NOT-SHOW"


@pytest.fixture
def spec() -> StackSpec:
    return StackSpec.from_yaml(EXAMPLES / "compact.yaml")


@pytest.fixture
def stack(spec: StackSpec, monkeypatch: pytest.MonkeyPatch) -> StackContext:
    monkeypatch.setattr(droplets, "inventory", lambda do, spec: [])
    spaces = SpacesCredentials(
        access_key=SecretStr("AKIA-x"), secret_key=SecretStr(SPACES_SECRET), region="nyc3"
    )
    ident = SSHIdentity(private_key=SecretStr(PRIVATE), public_key="ssh-ed25519 AAAAC3Nz x")
    return StackContext(spec, "prod", object(), {}, spaces, ident)


def test_repr_names_the_stack_never_a_secret(stack: StackContext) -> None:
    assert repr(stack) == "StackContext('compact', credentials='prod')"
    shown = repr(stack) + repr(stack.remote) + repr(stack.spaces_settings())
    assert SPACES_SECRET not in shown and "NOT-A-REAL-KEY" not in shown
    assert stack.spaces_settings()["secret_key"] == SPACES_SECRET


def test_prefect_records_a_placeholder_for_the_context(stack: StackContext) -> None:
    """A subflow's parameters go to the Prefect backend as JSON: the context (its clients,
    the SSH key) must not; Prefect stores a placeholder for what it cannot encode."""

    @flow
    def child(spec: StackSpec, credentials: str = "lab", stack: StackContext | None = None):
        return None

    recorded = child.serialize_parameters({"credentials": "prod", "stack": stack})
    assert recorded == {"credentials": "prod", "stack": "<StackContext>"}
    assert child.serialize_parameters({"stack": stack.remote}) == {"stack": "<Remote>"}


def test_opened_hands_down_the_parent_context_and_leaves_it_open(
    stack: StackContext, spec: StackSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = []
    monkeypatch.setattr(context, "save_pins", lambda name, remote: saved.append(name) or 0)
    with opened(spec, "ignored", stack) as ctx:
        assert ctx is stack
    assert saved == []  # the parent saves the pins, once, when its run ends
    stack.close()
    assert saved == ["prod"]


def test_require_complete_names_each_missing_droplet_and_the_repair(
    stack: StackContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = [{"name": "compact-db-2", "status": "off"}]
    monkeypatch.setattr(droplets, "stack_droplets", lambda do, spec: listed)
    with pytest.raises(ClusterError) as e:
        stack.require_complete()
    assert "compact-db-1 is gone; compact-db-2 is off; compact-db-3 is gone" in str(e.value)
    assert "lifeboat recover replace --member NAME" in str(e.value)


def test_resource_names_have_one_owner(spec: StackSpec) -> None:
    assert spec.resource_name == "lifeboat-compact"
    assert spec.web_firewall_name == "lifeboat-compact-web"
    assert spec.bucket == "lifeboat-compact"
    assert spec.backup_limit_name == "lifeboat-backup-compact"


def test_wordpress_source_is_the_specs_choice(spec: StackSpec) -> None:
    assert spec.wordpress.source == "release"  # the lab serves release archives too
    data = spec.model_dump()
    del data["wordpress"]["source"]
    assert StackSpec.model_validate(data).wordpress.source == "release"  # the default
    data["wordpress"]["source"] = "lab"
    with pytest.raises(ValidationError, match="'release' or 'debian-package'"):
        StackSpec.model_validate(data)
