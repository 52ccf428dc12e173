"""provision against the local cloud: bad input stops it before anything is created."""

from __future__ import annotations

import pytest

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity
from blocks.stack import SpecError, StackSpec
from flows.provision import provision
from tasks.droplets import CloudError

pytestmark = pytest.mark.e2e


def spec(name: str, **changes) -> StackSpec:
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data.update(name=name, vpc_cidr="10.40.0.0/16", **changes)
    return StackSpec.model_validate(data)


def stack_traces(do, stack: StackSpec) -> list[str]:
    droplets = do.droplets.list(tag_name=stack.stack_tag)["droplets"]
    vpcs = [v for v in do.vpcs.list()["vpcs"] if v["name"] == f"lifeboat-{stack.name}"]
    tags = [t for t in do.tags.list()["tags"] if t["name"] == stack.stack_tag]
    return [d["name"] for d in droplets] + [v["name"] for v in vpcs] + [t["name"] for t in tags]


def test_wrong_token_gives_a_clear_error_and_creates_nothing(do, lab, lab_blocks):
    # A complete set of credentials blocks whose token is wrong: the run opens all three
    # (a missing one is its own clear error, tests/integration/test_context_blocks.py).
    DigitalOceanCredentials(token="not-the-token", api_url=lab["api_url"], local_cloud=True).save(
        "wrong-token", overwrite=True
    )
    for block in (SpacesCredentials, SSHIdentity):  # a new document, not the lab's
        block(**block.load(lab_blocks).model_dump()).save("wrong-token", overwrite=True)
    stack = spec("badtoken")
    with pytest.raises(CloudError, match="rejected the API token.*nothing was created"):
        provision(stack, "wrong-token")
    assert stack_traces(do, stack) == []


def test_unknown_size_is_refused_before_anything_is_created(do, lab_blocks):
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data["groups"][0]["size"] = "s-64vcpu-512gb"
    stack = spec("badsize", groups=data["groups"])
    with pytest.raises(SpecError, match="size 's-64vcpu-512gb' is not offered: choose one of"):
        provision(stack, lab_blocks)
    assert stack_traces(do, stack) == []


def test_a_stack_over_the_droplet_limit_is_refused_before_anything_is_created(do, lab_blocks):
    limit = do.account.get()["account"]["droplet_limit"]
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    # Three more groups of up to 20 droplets: more than the account may ever have.
    extra = [{"name": f"x{i}", "count": 20, "roles": ["wordpress"]} for i in range(3)]
    data["groups"] += extra
    assert sum(g["count"] for g in data["groups"]) > limit
    stack = spec("toobig", groups=data["groups"])
    with pytest.raises(CloudError, match=r"needs \d+ more droplets.*nothing was created"):
        provision(stack, lab_blocks)
    assert stack_traces(do, stack) == []


@pytest.mark.parametrize("name", ["compact"])
def test_a_droplet_that_is_off_is_named_at_once_with_what_brings_it_back(
    stacks, name, do, lab_blocks
):
    """Waiting never turns an "off" droplet active: provision says so at once (it used to
    wait ten minutes per attempt, silently), and changes nothing else. A backup, which
    needs only a healthy database droplet, still runs meanwhile."""
    import time

    from lab import faults
    from tests.e2e.conftest import (
        delete_backup,
        power_on,
        site_serves_from_every_web_droplet,
        stack,
    )

    stack_spec, _ = stack(stacks, name)
    victim = stack_spec.nodes_with("wordpress")[-1].name
    droplet = faults.power_off(victim)
    try:
        t0 = time.monotonic()
        with pytest.raises(CloudError) as failed:
            provision(stack_spec, lab_blocks)
        took = time.monotonic() - t0
        message = str(failed.value)
        assert f"{victim} (id {droplet['id']}) is off" in message, message
        assert "power it on" in message and "lifeboat lab power-on" in message, message
        assert "lifeboat recover replace --member NAME" in message, message
        print(f"{name}: provision named the powered-off {victim} after {took:.1f} s")
        assert took < 120, f"provision took {took:.0f} s to say a droplet is off"
        # A backup needs one healthy database droplet, not every droplet: it runs. Its
        # objects are deleted again (manifest first), so the stack's catalog is as `up`
        # left it for test_backup.
        from flows.backup import backup

        delete_backup(stack_spec, lab_blocks, backup(stack_spec, lab_blocks)["id"])
    finally:
        power_on(do, droplet["id"])
    site_serves_from_every_web_droplet(do, stack_spec, timeout=180)
