"""How runbooks report: each step's outcome (created / updated / changed / unchanged) as a
Prefect table artifact, and in the flow's return value; long runbooks' progress as a
progress artifact."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def publish(key: str, title: str, steps: dict[str, str]) -> dict[str, str]:
    """`key` must be lowercase letters, digits and dashes (Prefect's artifact key rule)."""
    rows = [{"step": step, "outcome": outcome} for step, outcome in steps.items()]
    create_table_artifact(table=rows, key=key, description=title)
    return steps


class Progress:
    """A long runbook's progress: a progress artifact in the UI, updated in place as each
    step starts (with the step's name), and the same as a log line for the CLI."""

    def __init__(self, title: str, steps: list[str]) -> None:
        self.title, self.steps = title, steps
        self.artifact = create_progress_artifact(progress=0.0, description=f"{title}: starting")

    def step(self, name: str) -> None:
        n = self.steps.index(name)
        done = 100.0 * n / len(self.steps)
        update_progress_artifact(self.artifact, done, description=f"{self.title}: {name}")
        get_run_logger().info("%s: step %d/%d, %s", self.title, n + 1, len(self.steps), name)

    def done(self, outcome: str = "done") -> None:
        update_progress_artifact(self.artifact, 100.0, description=f"{self.title}: {outcome}")
