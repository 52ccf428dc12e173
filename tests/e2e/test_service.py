"""Lifeboat as a service against the local cloud (compact example): the runbooks deployed
with `prefect deploy --all` from a clean clone, and a run started over the API the way the
README's curl does it, idempotently, run to completion by a process worker."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from flows import service
from flows.recover import recover_switchover
from lifeboat.waiting import NotYet
from tasks.failover import FAULTS
from tests.e2e.conftest import (
    catalog,
    delete_backup,
    healthy_cluster,
    notifications_since,
    wait_flow_run,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_every_runbook_deployed_from_a_clean_clone(deployed, lab_blocks):
    spec = deployed["spec"]
    found = deployed["deployments"]
    assert sorted(found) == sorted(d["name"] for d in service.table(spec, lab_blocks))
    for d in found.values():
        assert d.parameters["stack"] == spec.name and d.parameters["credentials"] == lab_blocks
        assert (d.work_pool_name, d.work_queue_name) == ("lifeboat", f"stack-{spec.name}")
        assert d.pull_steps[0]["prefect.deployments.steps.set_working_directory"] == {
            "directory": str(deployed["clone"])
        }

    def schedule(name: str) -> str | None:
        s = found[f"{spec.name}-{name}"].schedules
        if not s:
            return None
        return getattr(s[0].schedule, "cron", None) or f"every {s[0].schedule.interval}"

    assert schedule("backup") == spec.backup.schedule
    assert schedule("backup-health") == "every 0:05:00"
    assert schedule("restore-drill") == "0 4 * * 0"
    assert schedule("switchover-drill") == "0 5 1 * *"
    for name in (
        "recover-switchover",
        "recover-reinit",
        "recover-replace",
        "failover-drill",
        "up",
    ):
        assert schedule(name) is None, f"{name} runs on a click or an API call only"
    # The UI renders a form: the stack by name, the fault as a choice.
    schema = found[f"{spec.name}-failover-drill"].parameter_openapi_schema
    assert schema["properties"]["stack"]["type"] == "string"
    assert schema["properties"]["fault"]["enum"] == list(FAULTS)
    target = found[f"{spec.name}-restore-drill"].parameter_openapi_schema["properties"]
    assert "date-time" in json.dumps(target["target_time"])


def _curl(*args: str) -> dict:
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", "Content-Type: application/json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_an_api_call_retried_with_its_idempotency_key_starts_one_run(
    deployed, worker, prefect_server
):
    """The README's two curl calls: find the deployment by name, start it with an
    idempotency key. The retried call returns the same run; the worker completes it."""
    api, spec = prefect_server.api_url, deployed["spec"]
    deployment = _curl(f"{api}/deployments/name/status/{spec.name}-status")
    key = f"e2e-{uuid.uuid4()}"
    body = json.dumps({"idempotency_key": key, "parameters": {}})
    first = _curl("-X", "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", "-d", body)
    again = _curl("-X", "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", "-d", body)
    assert again["id"] == first["id"]
    runs = _curl(
        "-X",
        "POST",
        f"{api}/flow_runs/filter",
        "-d",
        json.dumps({"deployments": {"id": {"any_": [deployment["id"]]}}}),
    )
    assert [r["id"] for r in runs if r["idempotency_key"] == key] == [first["id"]]
    run = wait_flow_run(first["id"], timeout=600)
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"


def test_a_run_for_a_spec_block_that_does_not_exist_fails_naming_it(
    deployed, worker, prefect_server
):
    api, spec = prefect_server.api_url, deployed["spec"]
    since = time.time()
    deployment = _curl(f"{api}/deployments/name/status/{spec.name}-status")
    body = json.dumps({"parameters": {"stack": "no-such-stack"}})
    run = _curl("-X", "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", "-d", body)
    final = wait_flow_run(run["id"], timeout=300)
    assert final.state.is_failed()
    message = final.state.message or ""
    assert "no stack spec block named 'no-such-stack'" in message, message
    assert f"stored: {spec.name}" in message and "lifeboat deploy --spec" in message, message
    # The stack's "a runbook failed" automation tells the operator.
    wait_for(
        "the failed-run notification",
        lambda: notifications_since(since, f"Lifeboat {spec.name}: status failed", run["name"]),
        timeout=120,
        every=2,
    )


def _newer_runs(api: str, deployment_id: str, since: str) -> list[dict]:
    body = {"deployments": {"id": {"any_": [deployment_id]}}}
    body["flow_runs"] = {"expected_start_time": {"after_": since}}
    return _curl("-X", "POST", f"{api}/flow_runs/filter", "-d", json.dumps(body))


def test_a_switchover_starts_the_after_failover_run_which_backs_up_the_new_timeline(
    deployed, worker, prefect_server, lab_blocks
):
    """The whole chain: Patroni's callback on the new primary spools the event, the
    droplet posts it, the automation starts the after-failover deployment with the new
    leader, the worker runs it: members streaming, routing and site checked, and a base
    backup on the new timeline in the catalog."""
    api, spec = prefect_server.api_url, deployed["spec"]
    healthy_cluster(spec, lab_blocks, timeout=240)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    switched = recover_switchover(spec, lab_blocks)
    new_leader = switched["leader"]
    deployment = deployed["deployments"][f"{spec.name}-after-failover"]

    def started() -> dict:
        runs = [
            r
            for r in _newer_runs(api, str(deployment.id), since)
            if r["parameters"].get("leader") == new_leader
        ]
        if not runs:
            raise NotYet("no after-failover run yet")
        return runs[0]

    run = wait_for("the after-failover run the event starts", started, timeout=120, every=2)
    wait_for(
        "the failover notification",
        lambda: notifications_since(
            time.time() - 300, f"Lifeboat {spec.name}: {new_leader} is the primary"
        ),
        timeout=120,
        every=2,
    )
    final = wait_flow_run(run["id"], timeout=900)
    assert final.state.is_completed(), f"{final.state.name}: {final.state.message}"
    members = healthy_cluster(spec, lab_blocks, timeout=120)
    lead = next(m for m in members if m.is_leader)
    assert lead.name == new_leader
    newest = catalog(spec, lab_blocks)[-1].backup
    try:
        assert newest.timeline == lead.timeline
        assert newest.stopped_at > time.time() - 1200
    finally:
        delete_backup(spec, lab_blocks, newest.id)


def test_no_backup_within_the_window_notifies(deployed, lab_blocks):
    """The proactive automation, with the 26 h window cut to 30 s: no backup succeeds in
    it, and the operator hears of it."""
    spec = deployed["spec"]
    since = time.time()
    service.ensure_automations(spec, f"custom-webhook/{lab_blocks}", backup_window=30)
    try:
        wait_for(
            "the missing-backup notification",
            lambda: notifications_since(
                since, f"Lifeboat {spec.name}: no successful backup in 30 s"
            ),
            timeout=240,
            every=3,
        )
    finally:
        service.ensure_automations(spec, f"custom-webhook/{lab_blocks}")  # back to 26 h
