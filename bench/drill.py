"""Benchmark of the restore drill in the local cloud (not a test): how long a drill over a
~750 MB database takes, droplet created to verified to destroyed, and where the time goes.
Prints figures, asserts nothing.

    uv run python -m bench.drill [--scale 50] [--rounds 3] [--keep] [--reuse]

Stack `kbench` (bench.backup's: examples/compact.yaml with one web droplet) is brought up
whole (`up`: cluster and site), a pgbench database of --scale is made on the primary, a
base backup taken, then the drill runs --rounds times against that same backup and
archive. Each round's steps come from the drill's own report; the table gives each
step's median and spread (min-max) over the rounds. The goal (issue 11) is a drill under
90 s here at scale 50. No baseline tool runs here: bench.backup times pgBackRest's restore
to writable against Lifeboat's on the same data.
"""

from __future__ import annotations

import argparse
import statistics

from bench.backup import bench_spec, clear_prefix, prepare_primary, primary_of, whole_stack_up
from blocks.credentials import SpacesCredentials
from flows.backup import backup
from flows.drill import restore_drill
from tasks import context as rm
from tasks import droplets

GOAL_S = 90.0


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} s  ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument("--reuse", action="store_true", help="do not destroy the stack first")
    args = parser.parse_args()

    spec = bench_spec()
    credentials, do = whole_stack_up(spec, args.reuse)
    try:
        hosts, remote = rm.load(spec, credentials)
        db_hosts = [h for h in hosts if "postgres" in h.roles]
        with remote.connect(db_hosts[0]) as conn:
            leader = primary_of(conn, db_hosts)
        with remote.connect(leader) as conn:
            prepare_primary(conn, args.scale)
        rm.save_pins(credentials, remote)
        taken = backup(spec, credentials)
        print(
            f"backup {taken['id']}: {taken['database_bytes'] / 1e6:.0f} MB database, "
            f"{taken['stored_bytes'] / 1e6:.0f} MB stored, {taken['seconds']} s"
        )
        reports = []
        for i in range(args.rounds):
            report = restore_drill(spec, credentials)
            reports.append(report)
            print(
                f"round {i + 1}: total {report['total_s']} s, RTO {report['rto_s']} s, "
                f"{report['throughput_mb_s']} MB/s of database fetched, checked and extracted"
            )
        print(f"\nrestore drill of {spec.name}, scale {args.scale}, {args.rounds} rounds")
        print(f"{'step':<22} median    (min-max)")
        for step in reports[0]["steps_s"]:
            print(f"{step:<22} {spread([r['steps_s'][step] for r in reports])}")
        for what in ("rto_s", "total_s"):
            print(f"{what:<22} {spread([r[what] for r in reports])}")
        worst = max(r["total_s"] for r in reports)
        verdict = "met" if worst < GOAL_S else "NOT met"
        print(f"goal: every drill under {GOAL_S:.0f} s: {verdict} (slowest {worst} s)")
    finally:
        if not args.keep:
            droplets.destroy_stack(do, spec)
            clear_prefix(SpacesCredentials.load(credentials), spec.bucket, f"{spec.name}/")
            print(f"stack {spec.name} destroyed, its objects deleted")


if __name__ == "__main__":
    main()
