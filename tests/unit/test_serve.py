"""The scheduled deployments `lifeboat serve` registers, built from a spec."""

from __future__ import annotations

from blocks.stack import StackSpec
from flows.backup import schedule_period
from flows.serve import HEALTH_EVERY, deployments


def test_backup_on_the_spec_schedule_and_health_every_few_minutes():
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data["backup"]["schedule"] = "30 2 * * *"
    spec = StackSpec.model_validate(data)
    backup, health = deployments(spec, "prod")
    assert backup.name == "compact-backup" and health.name == "compact-backup-health"
    assert backup.schedules[0].schedule.cron == "30 2 * * *"
    assert health.schedules[0].schedule.interval.total_seconds() == HEALTH_EVERY
    assert backup.parameters["wait_seconds"] == 0
    # The spec goes as JSON and comes back as the same spec.
    assert StackSpec.model_validate(backup.parameters["spec"]) == spec
    assert health.parameters["credentials"] == "prod"


def test_schedule_period_is_the_longest_gap():
    assert schedule_period("0 3 * * *", 0) == 86400
    assert schedule_period("0 3 * * 1,4", 0) == 4 * 86400  # Thursday to Monday
