"""serve: the stack's scheduled runbooks as Prefect deployments, run by this process
(`lifeboat serve`): the nightly base backup on the spec's `backup.schedule` and the backup
health check every few minutes. Runs also start from the Prefect UI or API ("Run")."""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment

from blocks.stack import StackSpec
from flows.backup import backup, backup_health

HEALTH_EVERY = 300  # seconds


def deployments(spec: StackSpec, credentials: str) -> list[RunnerDeployment]:
    # The spec travels as a parameter (JSON), so each run uses the spec served, and a
    # changed spec means serving again. A scheduled backup that finds one running is
    # refused, not queued: the next schedule tick catches up.
    params = {"spec": spec.model_dump(mode="json"), "credentials": credentials}
    tags = ["lifeboat", f"stack:{spec.name}"]
    return [
        backup.to_deployment(
            name=f"{spec.name}-backup",
            cron=spec.backup.schedule,
            parameters={**params, "wait_seconds": 0},
            tags=tags,
            description=f"Base backup of stack {spec.name} to Spaces, then retention.",
        ),
        backup_health.to_deployment(
            name=f"{spec.name}-backup-health",
            interval=HEALTH_EVERY,
            parameters=params,
            tags=tags,
            description=f"Fails when stack {spec.name}'s archive lags or backups are old.",
        ),
    ]
