"""service: the runbooks as deployments, for scheduled runs, one click in the Prefect UI
and API calls.

Each flow here is a runbook's entry point with parameters the UI renders as a form: the
stack by the name of its stored spec block (`lifeboat deploy` stores it, the deployment
fills it in), the fault as a choice, the target time as a date-time, a destructive fault
behind a box to tick. It runs the runbook's own code in this flow run (`.fn`), under the runbook's
name, so a deployed run and a CLI run of the same runbook sit side by side in the UI.

`deployments/prefect.yaml` is the one table of deployments (names, entry points,
schedules, parameters): `prefect deploy --all` reads it, and `lifeboat serve` builds the
same set from it (`deployments()` below).
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from importlib import import_module
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect import flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.automations import AutomationCore
from prefect.utilities.templating import apply_values

from blocks.stack import StackSpec
from flows import after_failover as after_failover_flow
from flows import backup as backup_flows
from flows import drill, failover, recover, status
from flows import up as up_flow
from flows.failover import Fault
from lifeboat.server import WORK_POOL
from tasks import events
from tasks.context import stored_spec

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


class StackNotHealthy(RuntimeError):
    """The status runbook found problems (a deployed run fails, so it can notify)."""


@flow(name="up")
def up(stack: str, credentials: str = "lab") -> dict:
    """Provision, build the cluster and the site, first backup; a rerun changes nothing."""
    return up_flow.up.fn(stored_spec(stack), credentials)


@flow(name="backup")
def backup(stack: str, credentials: str = "lab", wait_seconds: float = 0) -> dict:
    """A base backup to Spaces, retention, WAL verified. A backup already running makes
    this one wait up to `wait_seconds`, then it is refused."""
    return backup_flows.backup.fn(stored_spec(stack), credentials, wait_seconds)


@flow(name="backup-health")
def backup_health(
    stack: str, credentials: str = "lab", max_archive_age: float | None = None
) -> dict:
    """Fails when WAL archiving lags or the newest backup is older than the schedule."""
    return backup_flows.backup_health.fn(stored_spec(stack), credentials, max_archive_age)


@flow(name="status", log_prints=False)
def stack_status(stack: str, credentials: str = "lab") -> dict:
    """The stack as it is; the run fails when it is not healthy."""
    report = status.stack_status.fn(stored_spec(stack), credentials)
    if not report["ok"]:
        raise StackNotHealthy(f"stack {stack}: " + "; ".join(report["problems"]))
    return report


@flow(name="restore-drill", log_prints=False)
def restore_drill(
    stack: str,
    credentials: str = "lab",
    backup_id: str | None = None,
    target_time: datetime | None = None,
) -> dict:
    """Restore a backup (the newest, or the one `target_time` needs) into a scratch
    droplet, prove it, measure RTO and RPO; the scratch droplet is destroyed after."""
    return drill.restore_drill.fn(stored_spec(stack), credentials, backup_id, target_time)


@flow(name="failover-drill", log_prints=False)
def failover_drill(
    stack: str,
    credentials: str = "lab",
    fault: Fault = "switchover",
    allow_destructive: bool = False,
) -> dict:
    """Fault the primary while a probe writes; measure the write gap and lost writes.
    Every fault but switchover needs `allow_destructive`."""
    return failover.failover_drill.fn(stored_spec(stack), credentials, fault, allow_destructive)


@flow(name="recover-switchover", log_prints=False)
def recover_switchover(stack: str, credentials: str = "lab", to: str | None = None) -> dict:
    """Move the primary to `to` (default: the synchronous standby), then verify."""
    return recover.recover_switchover.fn(stored_spec(stack), credentials, to)


@flow(name="recover-reinit", log_prints=False)
def recover_reinit(stack: str, member: str, credentials: str = "lab") -> dict:
    """Rebuild replica `member` from the leader, then verify."""
    return recover.recover_reinit.fn(stored_spec(stack), credentials, member)


@flow(name="recover-replace", log_prints=False)
def recover_replace(
    stack: str, member: str, credentials: str = "lab", allow_destructive: bool = False
) -> dict:
    """Destroy droplet `member` (off, gone or broken) and build a new one in its place,
    joined as replica and etcd member; a running one only with `allow_destructive`."""
    return recover.recover_replace.fn(stored_spec(stack), credentials, member, allow_destructive)


@flow(name="after-failover", log_prints=False)
def after_failover(
    stack: str,
    credentials: str = "lab",
    leader: str | None = None,
    rejoin_timeout: float = 600,
) -> dict:
    """After the primary moved (started by Patroni's role-change event): members back,
    routing and the site checked, a base backup on the new timeline."""
    spec = stored_spec(stack)
    return after_failover_flow.after_failover.fn(spec, credentials, leader, rejoin_timeout)


# --- the table -----------------------------------------------------------------------------


def environment(spec: StackSpec, credentials: str) -> dict[str, str]:
    """What `deployments/prefect.yaml` takes from the environment for one stack."""
    return {
        "LIFEBOAT_STACK": spec.name,
        "LIFEBOAT_CREDENTIALS": credentials,
        "LIFEBOAT_BACKUP_CRON": spec.backup.schedule,
    }


def table(spec: StackSpec, credentials: str, path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments of `prefect.yaml` for one stack, placeholders filled in."""
    raw = yaml.safe_load(path.read_text())
    env = environment(spec, credentials)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return apply_values(raw["deployments"], {})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def deployments(spec: StackSpec, credentials: str) -> list[RunnerDeployment]:
    """The same deployments as `prefect deploy --all`, to be served by one process."""
    out = []
    for entry in table(spec, credentials):
        path, name = entry["entrypoint"].split(":")
        runbook = getattr(import_module(path.removesuffix(".py").replace("/", ".")), name)
        schedule = (entry.get("schedules") or [{}])[0]
        out.append(
            runbook.to_deployment(
                name=entry["name"],
                cron=schedule.get("cron"),
                interval=schedule.get("interval"),
                parameters=entry.get("parameters") or {},
                tags=entry.get("tags") or [],
                description=entry.get("description"),
                triggers=[DeploymentEventTrigger(**t) for t in entry.get("triggers") or []],
            )
        )
    return out


def ensure_work_queue(spec: StackSpec) -> str:
    """The process work pool and the stack's work queue in it, with a concurrency limit of
    1 (one runbook at a time touches a stack); created or corrected. Returns the queue."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    queue = f"stack-{spec.name}"
    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
        try:
            client.create_work_queue(name=queue, work_pool_name=WORK_POOL, concurrency_limit=1)
        except ObjectAlreadyExists:
            found = client.read_work_queue_by_name(queue, work_pool_name=WORK_POOL)
            client.update_work_queue(found.id, concurrency_limit=1)
    return queue


def deploy(spec: StackSpec, credentials: str) -> list[str]:
    """`prefect deploy --all` of the table for one stack, from this checkout, into the
    stack's work queue. Returns the deployment names."""
    import subprocess
    import sys

    ensure_work_queue(spec)
    env = {**os.environ, **environment(spec, credentials), "LIFEBOAT_CHECKOUT": str(ROOT)}
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    cmd += ["--prefect-file", str(PREFECT_YAML)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # noqa: S603
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"prefect deploy failed (exit {done.returncode}):\n{tail}")
    return [d["name"] for d in table(spec, credentials)]


def undeploy(spec: StackSpec) -> list[str]:
    """What `lifeboat deploy` made for the stack, removed from the server: its deployments
    (with their schedules and trigger), automations, work queue and stored spec block.
    Returns what was removed; a rerun removes nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.exceptions import ObjectNotFound

    names = [d["name"] for d in table(spec, "")]
    removed = []
    with get_client(sync_client=True) as client:
        flt = DeploymentFilter(name=DeploymentFilterName(any_=names))
        for deployment in client.read_deployments(deployment_filter=flt):
            client.delete_deployment(deployment.id)
            removed.append(f"deployment {deployment.name}")
        for automation in client.read_automations():
            if automation.name.startswith(f"{spec.name}: "):
                client.delete_automation(automation.id)
                removed.append(f"automation {automation.name!r}")
        with contextlib.suppress(ObjectNotFound):
            queue = client.read_work_queue_by_name(f"stack-{spec.name}", work_pool_name=WORK_POOL)
            client.delete_work_queue_by_id(queue.id)
            removed.append(f"work queue {queue.name}")
        with contextlib.suppress(ObjectNotFound):
            block = client.read_block_document_by_name(spec.name, "lifeboat-stack-spec")
            client.delete_block_document(block.id)
            removed.append(f"stack spec block {spec.name}")
    return removed


# --- notifications -------------------------------------------------------------------------

BACKUP_WINDOW = 26 * 3600  # a daily backup, plus two hours of slack


def automations(
    spec: StackSpec, block_document_id: UUID, backup_window: float = BACKUP_WINDOW
) -> list[AutomationCore]:
    """What reaches the operator through the notification block: a runbook of the stack
    failed or crashed, the primary moved, no backup succeeded within `backup_window`."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    def notify(subject: str, body: str) -> list[SendNotification]:
        return [SendNotification(block_document_id=block_document_id, subject=subject, body=body)]

    name, stack = spec.name, {"lifeboat.stack": spec.name}
    hours = f"{backup_window / 3600:g} h" if backup_window >= 3600 else f"{backup_window:.0f} s"
    return [
        AutomationCore(
            name=f"{name}: a runbook failed",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={"prefect.resource.id": f"prefect.tag.stack:{name}"},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=notify(
                f"Lifeboat {name}: {{{{ flow.name }}}} {{{{ flow_run.state.name | lower }}}}",
                "Flow run {{ flow_run.name }} of {{ flow.name }} ended "
                "{{ flow_run.state.name }}: {{ flow_run.state.message }}",
            ),
        ),
        AutomationCore(
            name=f"{name}: the primary moved",
            trigger=EventTrigger(
                expect={events.PROMOTED}, match=stack, posture=Posture.Reactive, threshold=1
            ),
            actions=notify(
                f"Lifeboat {name}: {{{{ event.resource['lifeboat.member'] }}}} is the primary",
                "Patroni promoted {{ event.resource['lifeboat.member'] }} at "
                "{{ event.occurred }}; the after-failover runbook checks the rest.",
            ),
        ),
        AutomationCore(
            name=f"{name}: no backup",
            trigger=EventTrigger(
                expect={events.BACKUP_SUCCEEDED},
                match=stack,
                posture=Posture.Proactive,
                threshold=1,
                within=backup_window,
            ),
            actions=notify(
                f"Lifeboat {name}: no successful backup in {hours}",
                f"No base backup of stack {name} succeeded in the last {hours}: see the "
                "backup deployment's runs, and `lifeboat backup-health`.",
            ),
        ),
    ]


def ensure_automations(
    spec: StackSpec, notify_block: str, backup_window: float = BACKUP_WINDOW
) -> list[str]:
    """Create or update the stack's notification automations; `notify_block` names a
    notification block as "<block type slug>/<name>" (e.g. custom-webhook/lab)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, block_name = notify_block.partition("/")
    with get_client(sync_client=True) as client:
        try:
            block = client.read_block_document_by_name(block_name, slug)
        except ObjectNotFound:
            raise ValueError(
                f"no notification block {notify_block!r}: save one (Prefect UI: Blocks, or "
                "`lifeboat lab blocks` in the local cloud) and name it as <type slug>/<name>"
            ) from None
        wanted = automations(spec, block.id, backup_window)
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            client.create_automation(automation)
    return [a.name for a in wanted]
