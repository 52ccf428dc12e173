"""How runbooks report: each step's outcome (created / updated / changed / unchanged) as a
Prefect table artifact, and in the flow's return value."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact


def publish(key: str, title: str, steps: dict[str, str]) -> dict[str, str]:
    """`key` must be lowercase letters, digits and dashes (Prefect's artifact key rule)."""
    rows = [{"step": step, "outcome": outcome} for step, outcome in steps.items()]
    create_table_artifact(table=rows, key=key, description=title)
    return steps
