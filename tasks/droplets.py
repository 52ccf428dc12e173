"""DigitalOcean resources of a stack, through pydo. The API is the inventory: everything a
stack owns carries the tag `lifeboat:<stack>`, so a rerun finds what exists by tag and
creates only what is missing."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pydo
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import DigitalOceanCredentials
from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import digitalocean
from tasks.hosts import Host

if TYPE_CHECKING:
    from tasks.context import StackContext


class CloudError(RuntimeError):
    """The cloud refused or failed a request; the message says what to change."""


class Unreachable(CloudError):
    """The API did not answer at all; `url` is where it was asked."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


def api(creds: DigitalOceanCredentials) -> pydo.Client:
    return digitalocean.client(creds.token.get_secret_value(), creds.api_url)


def check_access(do: pydo.Client, block_name: str, api_url: str) -> dict:
    """The first call of every runbook: a bad token or an API that does not answer stops it
    before anything is created, naming the URL and the block."""
    block = f"the DigitalOcean credentials block {block_name!r}"
    try:
        return do.account.get()["account"]
    except ClientAuthenticationError:
        raise CloudError(
            f"the DigitalOcean API at {api_url} rejected the API token (401 Unauthorized): put a "
            f"valid token in {block} and rerun; nothing was created"
        ) from None
    except HttpResponseError as exc:
        raise CloudError(
            f"the DigitalOcean API at {api_url} answered {_reason(exc)}: check the token and "
            f"api_url in {block}; nothing was created"
        ) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise Unreachable(
            f"cannot reach the DigitalOcean API at {api_url} ({unreachable(exc)}): check "
            f"api_url in {block} and this machine's network; nothing was created",
            api_url,
        ) from None


def unreachable(exc: Exception) -> str:
    """Why a request got no answer, in a few words (never the request itself)."""
    text = str(exc).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("name or service not known", "unknown host name"),
        ("temporary failure in name resolution", "unknown host name"),
        ("certificate", "TLS certificate not trusted"),
        ("unreachable", "network unreachable"),
        ("reset", "connection reset"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__


def _reason(exc: HttpResponseError) -> str:
    """The API's own message, never the request (whose headers carry the token)."""
    try:
        body = exc.response.json()
        return f"{exc.status_code} {body.get('id', '')}: {body.get('message', '')}"
    except Exception:  # noqa: BLE001 - a non-JSON error body
        return f"{exc.status_code} {exc.reason}"


def paged(list_call: Callable[..., dict], key: str, **params: Any) -> Iterator[dict]:
    """Every item of a paginated list endpoint."""
    page = 1
    while True:
        resp = list_call(per_page=200, page=page, **params)
        yield from resp.get(key, [])
        if not resp.get("links", {}).get("pages", {}).get("next"):
            return
        page += 1


def stack_droplets(do: pydo.Client, spec: StackSpec) -> list[dict]:
    return list(paged(do.droplets.list, "droplets", tag_name=spec.stack_tag))


def inventory(do: pydo.Client, spec: StackSpec) -> list[Host]:
    """The stack's droplets as Hosts, in the spec's order, with roles and group from the
    spec (the source of truth; tags mirror it). Only droplets the spec plans are returned."""
    by_name = {d["name"]: d for d in stack_droplets(do, spec)}
    hosts = []
    for node in spec.nodes():
        droplet = by_name.get(node.name)
        if droplet is None or droplet["status"] != "active":
            continue
        host = Host.from_droplet(droplet)
        hosts.append(
            Host(
                host.name, host.droplet_id, host.public_ip, host.private_ip, node.roles, node.group
            )
        )
    return hosts


def check_droplet_limit(do: pydo.Client, spec: StackSpec, account: dict) -> None:
    """Refuse up front what the account's droplet limit would stop halfway."""
    existing = {d["name"] for d in stack_droplets(do, spec)}
    missing = [n.name for n in spec.nodes() if n.name not in existing]
    total = sum(1 for _ in paged(do.droplets.list, "droplets"))
    limit = account.get("droplet_limit")
    if limit is not None and total + len(missing) > limit:
        raise CloudError(
            f"stack {spec.name} needs {len(missing)} more droplets, but the account already "
            f"has {total} of its limit of {limit}: destroy unused droplets or ask "
            "DigitalOcean for a higher limit; nothing was created"
        )


STOPPED = ("off", "archive")  # droplet states that waiting never turns into "active"


def wait_active(
    do: pydo.Client, spec: StackSpec, names: set[str], timeout: float = 600
) -> list[dict]:
    """Wait until every named droplet of the stack is active; fail naming the stragglers.
    A droplet that is off (or archived) never becomes active by waiting: fail at once,
    naming it and what brings it back."""

    def all_active() -> list[dict]:
        found = {d["name"]: d for d in stack_droplets(do, spec) if d["name"] in names}
        down = sorted(
            f"{n} (id {d['id']}) is {d['status']}"
            for n, d in found.items()
            if d["status"] in STOPPED
        )
        if down:
            raise CloudError(
                f"{'; '.join(down)}: power it on (DigitalOcean: the droplet's Power On; the "
                "local cloud: `lifeboat lab power-on NAME`) and rerun, or put a new droplet "
                "in its place: `lifeboat recover replace --member NAME`"
            )
        waiting = sorted(n for n in names if found.get(n, {}).get("status") != "active")
        if waiting:
            raise NotYet(", ".join(waiting))
        return list(found.values())

    try:
        return wait_until("droplets to be active", all_active, timeout, every=2)
    except WaitTimeout as e:
        raise CloudError(f"droplets not active after {timeout:.0f}s: {e.last}") from e


# --- provisioning: each `ensure_*` finds what exists and creates or fixes only the rest;
# each returns "created", "updated" or "unchanged" for the run's report. ---------------

VPC_PORTS = {  # reachable only from inside the VPC
    "2379": "etcd clients",
    "2380": "etcd peers",
    "5432": "PostgreSQL",
    "8008": "Patroni REST API",
}
WEB_HEALTH_PATH = "/lifeboat-health.php"  # the web tier's health endpoint (wordpress runbook)


def call(what: str, fn: Callable[..., dict], **kwargs: Any) -> dict:
    """One API call, with the API's reason (never the request) in the error."""
    try:
        return fn(**kwargs)
    except HttpResponseError as exc:
        raise CloudError(f"{what}: {_reason(exc)}") from None


def ensure_tags(do: pydo.Client, spec: StackSpec) -> str:
    wanted = {t for node in spec.nodes() for t in node.tags}
    existing = {t["name"] for t in paged(do.tags.list, "tags")}
    for tag in sorted(wanted - existing):
        call(f"creating tag {tag}", do.tags.create, body={"name": tag})
    return "created" if wanted - existing else "unchanged"


def ensure_ssh_key(do: pydo.Client, spec: StackSpec, public_key: str) -> tuple[int, str]:
    """The orchestrator's key, registered once per account (found by its public key)."""
    for key in paged(do.ssh_keys.list, "ssh_keys"):
        if key["public_key"].split()[:2] == public_key.split()[:2]:
            return key["id"], "unchanged"
    body = {"name": spec.resource_name, "public_key": public_key}
    return call("registering the SSH key", do.ssh_keys.create, body=body)["ssh_key"][
        "id"
    ], "created"


def ensure_vpc(do: pydo.Client, spec: StackSpec) -> tuple[dict, str]:
    name = spec.resource_name
    for vpc in paged(do.vpcs.list, "vpcs"):
        if vpc["name"] == name:
            if vpc["ip_range"] != spec.vpc_cidr or vpc["region"] != spec.region:
                raise CloudError(
                    f"VPC {name} exists with {vpc['ip_range']} in {vpc['region']}, but the spec "
                    f"asks for {spec.vpc_cidr} in {spec.region}: a VPC cannot be changed in "
                    "place; set vpc_cidr/region back or destroy the stack first"
                )
            return vpc, "unchanged"
    body = {
        "name": name,
        "region": spec.region,
        "ip_range": spec.vpc_cidr,
        "description": f"Lifeboat stack {spec.name}",
    }
    return call(f"creating VPC {name}", do.vpcs.create, body=body)["vpc"], "created"


def create_missing_droplets(
    do: pydo.Client, spec: StackSpec, vpc_id: str, ssh_key_id: int
) -> list[str]:
    """One create call per group for its missing droplets (DigitalOcean builds them in
    parallel); returns the names created."""
    existing = {d["name"] for d in stack_droplets(do, spec)}
    created = []
    for group in spec.groups:
        missing = [n for n in spec.nodes() if n.group == group.name and n.name not in existing]
        if not missing:
            continue
        body = {
            "names": [n.name for n in missing],
            "region": spec.region,
            "size": group.size,
            "image": spec.image,
            "ssh_keys": [ssh_key_id],
            "vpc_uuid": vpc_id,
            "tags": list(missing[0].tags),
            "monitoring": False,
        }
        call(f"creating droplets of group {group.name}", do.droplets.create, body=body)
        created += body["names"]
    return created


def open_outbound() -> list[dict]:
    """Outbound rules that let a droplet reach anything (tcp, udp, icmp)."""
    everywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
    return [
        {"protocol": proto, "ports": "0" if proto == "icmp" else "all", "destinations": everywhere}
        for proto in ("tcp", "udp", "icmp")
    ]


def _firewalls(spec: StackSpec, droplets: list[dict], lb_id: str | None) -> list[dict]:
    """The stack's firewalls: SSH only from the admin CIDRs; cluster ports only from the
    VPC; HTTP to WordPress droplets only from the load balancer."""
    by_name = {d["name"]: d["id"] for d in droplets}
    vpc = {"addresses": [spec.vpc_cidr]}
    ports = dict(VPC_PORTS)
    ports[str(spec.haproxy.primary_port)] = "HAProxy primary"
    ports[str(spec.haproxy.replica_port)] = "HAProxy replicas"
    ports[str(spec.haproxy.stats_port)] = "HAProxy stats"
    inbound = [{"protocol": "tcp", "ports": "22", "sources": {"addresses": spec.admin_cidrs}}]
    inbound += [{"protocol": "tcp", "ports": p, "sources": vpc} for p in sorted(ports)]
    inbound.append({"protocol": "icmp", "ports": "0", "sources": vpc})
    outbound = open_outbound()
    walls = [
        {
            "name": spec.resource_name,
            "tags": [spec.stack_tag],
            "droplet_ids": [],
            "inbound_rules": inbound,
            "outbound_rules": outbound,
        }
    ]
    web = [by_name[n.name] for n in spec.nodes_with("wordpress") if n.name in by_name]
    if web and lb_id:
        walls.append(
            {
                "name": spec.web_firewall_name,
                "tags": [],
                "droplet_ids": sorted(web),
                "inbound_rules": [
                    {"protocol": "tcp", "ports": "80", "sources": {"load_balancer_uids": [lb_id]}}
                ],
                "outbound_rules": outbound,
            }
        )
    return walls


def _same_rules(have: list[dict], want: list[dict]) -> bool:
    """Rules as sets, ignoring empty source/destination kinds the API may add."""

    def norm(rules: list[dict]) -> set[str]:
        out = set()
        for r in rules:
            peers = r.get("sources") or r.get("destinations") or {}
            peers = {k: sorted(v) for k, v in peers.items() if v}
            ports = "all" if str(r.get("ports", "")) in ("", "0", "all") else str(r["ports"])
            out.add(f"{r['protocol']} {ports} {sorted(peers.items())}")
        return out

    return norm(have) == norm(want)


def ensure_firewalls(
    do: pydo.Client, spec: StackSpec, droplets: list[dict], lb_id: str | None
) -> str:
    existing = {f["name"]: f for f in paged(do.firewalls.list, "firewalls")}
    outcome = "unchanged"
    for want in _firewalls(spec, droplets, lb_id):
        have = existing.get(want["name"])
        if have is None:
            call(f"creating firewall {want['name']}", do.firewalls.create, body=want)
            outcome = "created"
        elif (
            not _same_rules(have["inbound_rules"], want["inbound_rules"])
            or not _same_rules(have["outbound_rules"], want["outbound_rules"])
            or sorted(have.get("droplet_ids", [])) != want["droplet_ids"]
            or sorted(have.get("tags", [])) != sorted(want["tags"])
        ):
            call(
                f"updating firewall {want['name']}",
                do.firewalls.update,
                firewall_id=have["id"],
                body=want,
            )
            outcome = "updated" if outcome == "unchanged" else outcome
    return outcome


def ensure_load_balancer(
    do: pydo.Client, spec: StackSpec, droplets: list[dict], vpc_id: str
) -> tuple[dict | None, str]:
    """One load balancer in front of the WordPress droplets, checking the web tier's health
    endpoint over HTTP (a TCP check would pass for a broken PHP)."""
    by_name = {d["name"]: d["id"] for d in droplets}
    web = sorted(by_name[n.name] for n in spec.nodes_with("wordpress") if n.name in by_name)
    if not web:
        return None, "unchanged"
    name = spec.resource_name
    want = {
        "name": name,
        "region": spec.region,
        "vpc_uuid": vpc_id,
        "forwarding_rules": [
            {
                "entry_protocol": "http",
                "entry_port": 80,
                "target_protocol": "http",
                "target_port": 80,
            }
        ],
        "health_check": {
            "protocol": "http",
            "port": 80,
            "path": WEB_HEALTH_PATH,
            "check_interval_seconds": 3,
            "response_timeout_seconds": 3,
            "healthy_threshold": 2,
            "unhealthy_threshold": 2,
        },
        "droplet_ids": web,
    }
    for lb in paged(do.load_balancers.list, "load_balancers"):
        if lb["name"] == name:
            same = sorted(lb.get("droplet_ids", [])) == web and all(
                lb["health_check"].get(k) == v for k, v in want["health_check"].items()
            )
            if same:
                return lb, "unchanged"
            resp = call(
                f"updating load balancer {name}",
                do.load_balancers.update,
                lb_id=lb["id"],
                body=want,
            )
            return resp["load_balancer"], "updated"
    resp = call(f"creating load balancer {name}", do.load_balancers.create, body=want)
    return resp["load_balancer"], "created"


def _stack_resources(do: pydo.Client, spec: StackSpec) -> dict[str, list[dict]]:
    """What the stack owns in the cloud, by kind, in the order `destroy_stack` removes it:
    its load balancer, firewalls, droplets (the stack's tag, and a drill's scratch droplet
    by the drill's tag) and VPC."""
    names = {spec.resource_name, spec.web_firewall_name, spec.drill_firewall_name}
    droplets = [
        d
        for tag in (spec.stack_tag, spec.drill_tag)
        for d in paged(do.droplets.list, "droplets", tag_name=tag)
    ]
    return {
        "load balancer": [
            lb for lb in paged(do.load_balancers.list, "load_balancers") if lb["name"] in names
        ],
        "firewall": [fw for fw in paged(do.firewalls.list, "firewalls") if fw["name"] in names],
        "droplet": droplets,
        "vpc": [v for v in paged(do.vpcs.list, "vpcs") if v["name"] == spec.resource_name],
    }


def _named(found: dict[str, list[dict]]) -> list[str]:
    return [f"{kind} {r['name']}" for kind, resources in found.items() for r in resources]


def owned(do: pydo.Client, spec: StackSpec) -> list[str]:
    """What the stack owns in the cloud now (what `destroy_stack` removes), named."""
    return _named(_stack_resources(do, spec))


def destroy_stack(do: pydo.Client, spec: StackSpec, timeout: float = 300) -> list[str]:
    """Everything the stack owns in the cloud: load balancer, firewalls, droplets (by tag),
    then the VPC once it is empty, then the stack's tags. Returns what was removed."""
    found = _stack_resources(do, spec)
    for lb in found["load balancer"]:
        call(f"deleting load balancer {lb['name']}", do.load_balancers.delete, lb_id=lb["id"])
    for fw in found["firewall"]:
        call(f"deleting firewall {fw['name']}", do.firewalls.delete, firewall_id=fw["id"])
    ours = {spec.stack_tag, spec.drill_tag}
    for tag in sorted({t for d in found["droplet"] for t in d["tags"]} & ours):
        call("destroying droplets", do.droplets.destroy_by_tag, tag_name=tag)
    for vpc in found["vpc"]:
        try:
            wait_until(
                f"VPC {vpc['name']} to have no members",
                lambda vpc=vpc: not do.vpcs.list_members(vpc_id=vpc["id"]).get("members"),
                timeout,
                every=2,
            )
        except WaitTimeout as e:
            raise CloudError(f"VPC {vpc['name']} still has members after {timeout:.0f}s") from e
        call(f"deleting VPC {vpc['name']}", do.vpcs.delete, vpc_id=vpc["id"])
    tags = {t["name"] for t in paged(do.tags.list, "tags")}
    for tag in sorted(tags & ours):
        call(f"deleting tag {tag}", do.tags.delete, tag_id=tag)
    return _named(found)


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="destroy", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def destroy(stack: StackContext) -> list[str]:
    """The stack's droplets, load balancer, firewalls, VPC and tags, and the host keys
    pinned for its droplets; then nothing of it may be left (CloudError naming what is)."""
    for host in stack.hosts:
        stack.remote.forget(host)  # closed first; its pin goes when the context closes
    gone = destroy_stack(stack.do, stack.spec)
    left = owned(stack.do, stack.spec)
    if left:
        raise CloudError(f"still in the cloud after destroying stack {stack.spec.name}: {left}")
    stack.hosts = []
    return gone


@task(name="check_account", cache_policy=NO_CACHE)  # no retries: a bad token or spec stays bad
def check_account(stack: StackContext) -> None:
    """Token (checked when the context opened), droplet limit and spec checked before
    anything is created."""
    do, spec = stack.do, stack.spec
    check_droplet_limit(do, spec, stack.account)
    regions = {r["slug"] for r in paged(do.regions.list, "regions") if r["available"]}
    sizes = {s["slug"] for s in paged(do.sizes.list, "sizes") if s["available"]}
    spec.check_catalog(regions, sizes)


@task(name="cloud_resources", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def cloud_resources(stack: StackContext) -> dict[str, str]:
    do, spec = stack.do, stack.spec
    outcome = {"tags": ensure_tags(do, spec)}
    key_id, outcome["ssh key"] = ensure_ssh_key(do, spec, stack.public_key)
    vpc, outcome["vpc"] = ensure_vpc(do, spec)
    created = create_missing_droplets(do, spec, vpc["id"], key_id)
    outcome["droplets"] = f"created {len(created)}" if created else "unchanged"
    active = wait_active(do, spec, {n.name for n in spec.nodes()})
    lb, outcome["load balancer"] = ensure_load_balancer(do, spec, active, vpc["id"])
    outcome["firewalls"] = ensure_firewalls(do, spec, active, lb["id"] if lb else None)
    return outcome


@task(name="verify", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def verify(stack: StackContext) -> list[Host]:
    """Every planned droplet active, on the stack's VPC, behind its firewall."""
    do, spec = stack.do, stack.spec
    hosts = inventory(do, spec)
    missing = {n.name for n in spec.nodes()} - {h.name for h in hosts}
    if missing:
        raise CloudError(f"droplets missing or not active: {', '.join(sorted(missing))}")
    vpc = ipaddress.ip_network(spec.vpc_cidr)
    outside = [h.name for h in hosts if ipaddress.ip_address(h.private_ip) not in vpc]
    if outside:
        raise CloudError(f"droplets outside {vpc}: {', '.join(outside)}")
    walls = {f["name"] for f in paged(do.firewalls.list, "firewalls")}
    if spec.resource_name not in walls:
        raise CloudError(f"firewall {spec.resource_name} is missing")
    return hosts
