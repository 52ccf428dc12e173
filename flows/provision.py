"""provision: from a stack spec to droplets, VPC, firewalls, load balancer and the Spaces
bucket. The DigitalOcean API, by tag, is the inventory: a rerun creates only what is
missing, and the run reports each resource as created, updated or unchanged."""

from __future__ import annotations

import ipaddress

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity
from blocks.stack import StackSpec
from flows.report import publish
from tasks import droplets, spaces
from tasks.hosts import Host

step = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)


@task(cache_policy=NO_CACHE)  # no retries: a bad token or spec stays bad
def check_account(spec: StackSpec, credentials: str) -> None:
    """Token and spec checked before anything is created."""
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    account = droplets.check_access(do, credentials)
    droplets.check_droplet_limit(do, spec, account)
    regions = {r["slug"] for r in droplets.paged(do.regions.list, "regions") if r["available"]}
    sizes = {s["slug"] for s in droplets.paged(do.sizes.list, "sizes") if s["available"]}
    spec.check_catalog(regions, sizes)


@step
def cloud_resources(spec: StackSpec, credentials: str) -> dict[str, str]:
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    public_key = SSHIdentity.load(credentials).public_key
    outcome = {"tags": droplets.ensure_tags(do, spec)}
    key_id, outcome["ssh key"] = droplets.ensure_ssh_key(do, spec, public_key)
    vpc, outcome["vpc"] = droplets.ensure_vpc(do, spec)
    created = droplets.create_missing_droplets(do, spec, vpc["id"], key_id)
    outcome["droplets"] = f"created {len(created)}" if created else "unchanged"
    active = droplets.wait_active(do, spec, {n.name for n in spec.nodes()})
    lb, outcome["load balancer"] = droplets.ensure_load_balancer(do, spec, active, vpc["id"])
    outcome["firewalls"] = droplets.ensure_firewalls(do, spec, active, lb["id"] if lb else None)
    return outcome


@step
def bucket(spec: StackSpec, credentials: str) -> str:
    return spaces.ensure_bucket(SpacesCredentials.load(credentials), spec.bucket)


@step
def verify(spec: StackSpec, credentials: str) -> list[Host]:
    """Every planned droplet active, on the stack's VPC, behind its firewall."""
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    hosts = droplets.inventory(do, spec)
    missing = {n.name for n in spec.nodes()} - {h.name for h in hosts}
    if missing:
        raise droplets.CloudError(f"droplets missing or not active: {', '.join(sorted(missing))}")
    vpc = ipaddress.ip_network(spec.vpc_cidr)
    outside = [h.name for h in hosts if ipaddress.ip_address(h.private_ip) not in vpc]
    if outside:
        raise droplets.CloudError(f"droplets outside {vpc}: {', '.join(outside)}")
    walls = {f["name"] for f in droplets.paged(do.firewalls.list, "firewalls")}
    if f"lifeboat-{spec.name}" not in walls:
        raise droplets.CloudError(f"firewall lifeboat-{spec.name} is missing")
    return hosts


@flow(name="provision", log_prints=False)
def provision(spec: StackSpec, credentials: str = "lab") -> list[Host]:
    """Droplets per group, VPC, tags, SSH key, firewalls, load balancer, Spaces bucket."""
    log = get_run_logger()
    check_account(spec, credentials)
    outcome = cloud_resources(spec, credentials)
    outcome["spaces bucket"] = bucket(spec, credentials)
    hosts = verify(spec, credentials)
    for what, result in outcome.items():
        log.info("%s: %s", what, result)
    publish(f"provision-{spec.name}", f"provision of stack {spec.name}", outcome)
    return hosts
