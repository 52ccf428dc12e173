"""Benchmark of `lifeboat up` in the local cloud (not a test): prints figures only.

    uv run python -m bench.up [examples/article.yaml examples/compact.yaml]

For each spec: the stack is destroyed first (so `up` starts from nothing), then `up` runs
and its wall time is printed split by runbook step, from Prefect's own task run records
(each step's span from its first task run's start to its last one's end); then a rerun on
the healthy stack, which should change nothing.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

from blocks.credentials import DigitalOceanCredentials
from blocks.stack import StackSpec
from flows.up import up
from lab import lifecycle
from lab.credentials import save_blocks
from tasks import droplets


def step_spans(since: datetime) -> list[tuple[str, float]]:
    """(step, wall seconds) for task runs started after `since`, in order of start."""
    spans: dict[str, list[datetime]] = defaultdict(list)
    flt = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=flt, limit=200)  # API maximum
    for run in runs:
        if run.start_time and run.end_time:
            key = run.name.rsplit("-", 1)[0]
            spans[key] += [run.start_time, run.end_time]
    ordered = sorted(spans.items(), key=lambda kv: min(kv[1]))
    return [(k, (max(v) - min(v)).total_seconds()) for k, v in ordered]


def bench(path: str, credentials: str) -> None:
    spec = StackSpec.from_yaml(path)
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    droplets.destroy_stack(do, spec)
    for label in ("from nothing", "rerun"):
        since = datetime.now().astimezone()
        t0 = time.monotonic()
        up(spec, credentials)
        total = time.monotonic() - t0
        print(f"\n{spec.name} ({len(spec.nodes())} droplets), up {label}: {total:6.1f} s")
        for step, seconds in step_spans(since):
            print(f"  {step:<22} {seconds:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "specs",
        nargs="*",
        default=["examples/article.yaml", "examples/compact.yaml"],
        help="stack specs to bring up (default: both examples)",
    )
    specs = parser.parse_args().specs
    info = lifecycle.up()
    credentials = save_blocks(info)
    for path in specs:
        bench(path, credentials)


if __name__ == "__main__":
    main()
