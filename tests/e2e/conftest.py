"""Fixtures for end-to-end tests against the local cloud (`lifeboat lab up` first)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator

import paramiko
import pydo
import pytest
from fabric import Connection

from blocks.stack import StackSpec
from lab import lifecycle
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import digitalocean, patroni

EXAMPLES = ("article", "compact")


@pytest.fixture(scope="session")
def lab() -> dict:
    info = lifecycle.info()
    if not info.get("up"):
        pytest.fail("the local cloud is not up: run `lifeboat lab up` (make test does)")
    return info


@pytest.fixture(scope="session")
def do(lab: dict) -> pydo.Client:
    return digitalocean.client(lab["api_token"], lab["api_url"])


@pytest.fixture(scope="session")
def ssh_key_id(do: pydo.Client, lab: dict) -> int:
    """The lab's SSH key registered with the account (once; reused if already there)."""
    for key in do.ssh_keys.list(per_page=200)["ssh_keys"]:
        if key["public_key"] == lab["ssh_public_key"]:
            return key["id"]
    body = {"name": "e2e", "public_key": lab["ssh_public_key"]}
    return do.ssh_keys.create(body=body)["ssh_key"]["id"]


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, every: float = 0.5):
    """`lifeboat.waiting.wait_until` for tests: poll until `check()` is truthy (it may
    raise `NotYet("why")`), and fail the test saying what was awaited and the last reason
    after `timeout` seconds. An assertion on a state that settles (lag, LB membership,
    HAProxy backends, droplet status) waits through this, never reads one snapshot."""
    try:
        return wait_until(what, check, timeout=timeout, every=every)
    except WaitTimeout as e:
        pytest.fail(str(e))


def ssh(lab: dict, host: str, timeout: float = 10) -> Connection:
    """Fabric connection to a droplet as root with the lab key. Lab droplets get fresh host
    keys at every create, so tests accept the first key they see."""
    conn = Connection(
        host,
        user="root",
        connect_timeout=timeout,
        connect_kwargs={
            "key_filename": lab["ssh_private_key"],
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    return conn


def public_ip(droplet: dict) -> str:
    return next(n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public")


def private_ip(droplet: dict) -> str:
    return next(n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "private")


@pytest.fixture(scope="session")
def lab_blocks(lab: dict, prefect_server: None) -> str:
    """The lab's credentials as Prefect blocks named "lab" (what `--credentials lab` loads)."""
    from lab.credentials import save_blocks

    return save_blocks(lab)


def example_spec(name: str) -> StackSpec:
    """An example spec as the e2e tests use it. LIFEBOAT_E2E_PREFIX renames the stack and
    LIFEBOAT_E2E_VPC_SHIFT moves its VPC range (second octet + shift), so two test
    sessions can share one lab while developing; CI sets neither. Events go to the
    session's Prefect server (LIFEBOAT_E2E_EVENTS_URL, set by `prefect_server`)."""
    data = StackSpec.from_yaml(f"examples/{name}.yaml").model_dump()
    if os.environ.get("LIFEBOAT_E2E_EVENTS_URL"):
        data["events"]["api_url"] = os.environ["LIFEBOAT_E2E_EVENTS_URL"]
    prefix = os.environ.get("LIFEBOAT_E2E_PREFIX", "")
    shift = int(os.environ.get("LIFEBOAT_E2E_VPC_SHIFT", "0"))
    if prefix or shift:
        net = ipaddress.ip_network(data["vpc_cidr"])
        octets = str(net.network_address).split(".")
        octets[1] = str(int(octets[1]) + shift)
        data.update(name=f"{prefix}{name}", vpc_cidr=f"{'.'.join(octets)}/{net.prefixlen}")
    return StackSpec.model_validate(data)


@pytest.fixture(scope="session")
def stacks(lab_blocks: str) -> dict[str, tuple[StackSpec, dict]]:
    """The example stacks, each brought up from nothing (`up`) once per session and shared
    by every module that needs a whole stack; tests that break something put it back.
    LIFEBOAT_E2E_EXAMPLES (comma-separated) limits which examples come up."""
    from flows.up import up

    wanted = os.environ.get("LIFEBOAT_E2E_EXAMPLES", ",".join(EXAMPLES)).split(",")
    out = {}
    for name in (n for n in EXAMPLES if n in wanted):
        spec = example_spec(name)
        out[name] = (spec, up(spec, lab_blocks))
    return out


def stack(stacks: dict, name: str) -> tuple[StackSpec, dict]:
    """One example stack; skips the test when this session did not bring it up."""
    if name not in stacks:
        pytest.skip(f"example {name} not in LIFEBOAT_E2E_EXAMPLES")
    return stacks[name]


def cluster_members(spec: StackSpec, credentials: str) -> list[patroni.Member]:
    """Patroni's view of the stack's cluster, from the first database droplet that
    answers (one whose Patroni is stopped or just starting answers nothing)."""
    from tasks import context as rm

    hosts, remote = rm.load(spec, credentials)
    db = [h for h in hosts if "postgres" in h.roles]
    with remote.connect(db[0]) as conn:
        return patroni.cluster(conn, *[h.private_ip for h in db])


def leader(members: list[patroni.Member]) -> patroni.Member:
    (lead,) = [m for m in members if m.is_leader]
    return lead


def healthy_cluster(
    spec: StackSpec, credentials: str, timeout: float = 120
) -> list[patroni.Member]:
    """Wait until the stack's cluster is what the runbooks promise (one running leader,
    every replica streaming on its timeline and caught up by its live lag, a synchronous
    standby when asked for): the runbook's own wait, `patroni.wait_healthy`."""
    from tasks import context as rm

    hosts, remote = rm.load(spec, credentials)
    db = [h for h in hosts if "postgres" in h.roles]
    expected = [n.name for n in spec.nodes_with("postgres")]
    with remote.connect(db[0]) as conn:
        try:
            return patroni.wait_healthy(
                conn, [h.private_ip for h in db], expected, spec.synchronous_mode, timeout
            )
        except patroni.PatroniError as e:
            pytest.fail(str(e))


def site_serves_from_every_web_droplet(do: pydo.Client, spec: StackSpec, timeout: float = 120):
    """Wait until the load balancer's address answers healthy from each web droplet in
    turn: the site is whole again (after a database fault the load balancer needs its
    rise count of passing checks per droplet)."""
    from tasks import wordpress as wp

    lb = wp.load_balancer(do, spec)
    for node in spec.nodes_with("wordpress"):
        try:
            wp.wait_lb_routes_to(lb, node.name, timeout=timeout)
        except wp.WordPressError as e:
            pytest.fail(str(e))
    return lb


def power_on(do: pydo.Client, droplet_id: int) -> None:
    """Power a droplet on through the API and wait until it is active again."""
    do.droplet_actions.post(droplet_id=droplet_id, body={"type": "power_on"})
    wait_for(
        "the droplet to be active again",
        lambda: do.droplets.get(droplet_id=droplet_id)["droplet"]["status"] == "active",
        timeout=120,
        every=1,
    )


@pytest.fixture(scope="module")
def deployed(
    stacks: dict, lab_blocks: str, prefect_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """The compact stack's runbooks deployed to the session's server the way an operator
    does it: its spec block saved, then `prefect deploy --all` with deployments/prefect.yaml
    from a clean clone of this repository (the committed code). Schedules are paused
    afterwards: no scheduled drill may start in the middle of other tests. Deleted with
    their automations after the module: other modules' switchovers start no runs."""
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    from blocks.stack import StackSpecBlock
    from flows import service

    spec, _ = stack(stacks, "compact")
    StackSpecBlock(spec=spec).save(spec.name, overwrite=True)
    clone = tmp_path_factory.mktemp("clone") / "lifeboat"
    subprocess.run(["git", "clone", "-q", str(service.ROOT), str(clone)], check=True, timeout=120)
    env = {
        **os.environ,
        **service.environment(spec, lab_blocks),
        "LIFEBOAT_CHECKOUT": str(clone),
        "PREFECT_API_URL": prefect_server.api_url,
    }
    service.ensure_work_queue(spec)
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
        + ["--prefect-file", "deployments/prefect.yaml"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Notifications to the local cloud's receiver (`lifeboat deploy --notify custom-webhook/lab`).
    service.ensure_automations(spec, f"custom-webhook/{lab_blocks}")
    with get_client(sync_client=True) as client:
        found = {
            d.name: d for d in client.read_deployments() if f"stack:{spec.name}" in (d.tags or [])
        }
        for d in found.values():
            for sched in d.schedules:
                client.update_deployment_schedule(d.id, sched.id, active=False)
    yield {"spec": spec, "clone": clone, "deployments": found, "output": done.stdout}
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith(f"{spec.name}:"):
                client.delete_automation(automation.id)
        for d in found.values():
            client.delete_deployment(d.id)


@pytest.fixture(scope="module")
def worker(deployed: dict, prefect_server, tmp_path_factory: pytest.TempPathFactory):
    """A process worker on the "lifeboat" pool, as an operator starts one."""
    import signal
    import subprocess
    import sys

    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "lifeboat"]
            + ["--type", "process", "--name", "e2e"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield {"pid": proc.pid, "log": log}
    finally:
        # The worker does not end on SIGTERM while its loop is busy (30 s measured): the
        # test is over, so SIGKILL follows a short grace to its whole process group.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_flow_run(flow_run_id, timeout: float = 600) -> object:
    """The flow run once it is final (Completed, Failed, Crashed, Cancelled)."""
    from prefect.client.orchestration import get_client

    def final():
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
        if run.state is None or not run.state.is_final():
            raise NotYet(f"flow run {run.name} is {run.state.name if run.state else 'new'}")
        return run

    return wait_for(f"flow run {flow_run_id} to finish", final, timeout=timeout, every=2)


def catalog(spec: StackSpec, credentials: str) -> list:
    """The stack's cataloged backups, oldest first (tasks.backup.read_catalog)."""
    from blocks.credentials import SpacesCredentials
    from tasks import backup as bk
    from tasks.spaces import s3_client

    s3 = s3_client(SpacesCredentials.load(credentials))
    return bk.read_catalog(s3, spec.bucket, spec.name)[0]


def delete_backup(spec: StackSpec, credentials: str, backup_id: str) -> None:
    """Delete a backup a test took (its manifest first, as retention does), so the catalog
    is as `up` left it: test_backup counts one backup per stack."""
    from blocks.credentials import SpacesCredentials
    from tasks import backup as bk
    from tasks.spaces import s3_client

    s3 = s3_client(SpacesCredentials.load(credentials))
    entry = next(e for e in catalog(spec, credentials) if e.backup.id == backup_id)
    bk.delete_keys(s3, spec.bucket, [entry.backup.keys[-1], *entry.backup.keys[:-1]])


def notifications_since(since: float, *fragments: str) -> list[dict]:
    """What the local cloud's receiver got after `since` (epoch) whose JSON holds every
    fragment; NotYet when nothing does (for wait_for)."""
    import json

    from lab import notifications

    got = [
        n
        for n in notifications.received()
        if n["received_at"] >= since and all(f in json.dumps(n["body"]) for f in fragments)
    ]
    if not got:
        raise NotYet(f"no notification with {fragments} yet")
    return got
