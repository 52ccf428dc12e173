"""Opening a stack context with credentials blocks that are not stored fails before
anything is created, naming the block and how to save it (a real Prefect server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from tasks.context import ClusterError, StackContext, check_blocks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_missing_blocks_are_named_before_anything_runs(prefect_server: None) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClusterError, match=rf"no .* block named '{name}'.*lifeboat lab blocks"):
        check_blocks(name)
    with pytest.raises(ClusterError, match=name):
        StackContext.open(StackSpec.from_yaml(EXAMPLES / "compact.yaml"), name)


def test_a_forgotten_droplets_pin_leaves_the_block(prefect_server: None) -> None:
    """A droplet destroyed in a run (replaced, a drill's scratch one): its host key leaves
    the SSH identity block when the run saves its pins; new keys are added, others kept."""
    from pydantic import SecretStr

    from blocks.credentials import SSHIdentity
    from tasks.context import Remote, save_pins
    from tasks.hosts import Host

    name = f"pins-{uuid.uuid4().hex[:8]}"
    gone = Host("st-db-2", 7, "198.18.16.7", "10.0.0.7")
    known = {gone.pin_key: "ssh-ed25519 AAAAold", "8/198.18.16.8": "ssh-ed25519 AAAAkept"}
    SSHIdentity(
        private_key=SecretStr("not a key"), public_key="ssh-ed25519 AAAAx", known_hosts=known
    ).save(name)
    remote = Remote("not a key", known)
    remote.forget(gone)
    save_pins(name, remote)
    assert SSHIdentity.load(name).known_hosts == {"8/198.18.16.8": "ssh-ed25519 AAAAkept"}
