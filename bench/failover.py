"""Benchmark of failover in the local cloud (not a test): the failover drill's own
figures over several trials per fault, with Patroni's and HAProxy's stock timers and with
Lifeboat's tuned ones, in one run. Prints figures, asserts nothing.

    uv run python -m bench.failover [--rounds 5] [--faults power-off,switchover] [--keep]
                                    [--reuse]

Stack `fbench`: examples/compact.yaml renamed (VPC 10.50.0.0/16; etcd on the three
database droplets, synchronous replication, two web droplets with HAProxy), brought up by
`flows.up.up`. Each trial is `flows.failover.failover_drill` itself: a probe on a web
droplet writes through HAProxy every 50 ms with its own keys, the fault hits the primary,
the drill puts the cluster back and checks that no acknowledged write is lost.

Settings, applied by the cluster runbook before each block of trials (Patroni's dynamic
configuration, HAProxy reloaded; nothing restarted):
- stock: Patroni ttl 30 / loop_wait 10 / retry_timeout 10, HAProxy `inter 3s fall 3
  rise 2` (FIELD-NOTES' "stock");
- tuned: the spec's defaults, ttl 20 / loop_wait 5 / retry_timeout 7, `inter 1s fastinter
  500ms fall 2 rise 1`.
Rounds alternate which setting goes first. For each setting and fault: the write gap's
median, min-max and max, acknowledged writes lost (sum), time to a new leader, healthy
again, and how the old primary came back; every trial's gap is printed too. The anchors
of FIELD-NOTES (measured on another stack with `systemctl stop patroni` for the "planned"
row) are printed beside them, not re-measured. The site's gap is the front page through
the load balancer (the drill's SiteProbe). Not measured: the watcher (not built).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

from bench.backup import whole_stack_up
from blocks.stack import StackSpec
from flows.cluster import cluster
from flows.failover import failover_drill
from tasks import context as rm
from tasks import droplets, patroni

STACK = "fbench"
VPC = "10.50.0.0/16"
STOCK = {
    "patroni": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
    "haproxy": {"check_inter": "3s", "fastinter": "3s", "fall": 3, "rise": 2},
}
# FIELD-NOTES, tuned vs stock, medians: power-off 18.0 / 34.5 s; the planned row there is
# `systemctl stop patroni` (2.1 / 8.1 s), the nearest to a switchover it measured.
ANCHORS = {("tuned", "power-off"): 18.0, ("stock", "power-off"): 34.5}
ANCHORS_PLANNED = {"tuned": 2.1, "stock": 8.1}


def bench_spec() -> StackSpec:
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data.update(name=STACK, vpc_cidr=VPC)
    return StackSpec.model_validate(data)


def with_timers(spec: StackSpec, setting: str) -> StackSpec:
    if setting == "tuned":
        return spec
    data = spec.model_dump()
    for section, values in STOCK.items():
        data[section].update(values)
    return StackSpec.model_validate(data)


def wait_healthy(spec: StackSpec, credentials: str) -> None:
    hosts, remote = rm.load(spec, credentials)
    db = [h for h in hosts if "postgres" in h.roles]
    expected = [n.name for n in spec.nodes_with("postgres")]
    with remote.connect(db[0]) as conn:
        patroni.wait_healthy(
            conn, [h.private_ip for h in db], expected, spec.synchronous_mode, timeout=300
        )
    remote.close()


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--faults", default="power-off,switchover")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument("--reuse", action="store_true", help="do not destroy the stack first")
    args = parser.parse_args()
    faults = args.faults.split(",")

    spec = bench_spec()
    credentials, do = whole_stack_up(spec, args.reuse)
    reports: dict[tuple[str, str], list[dict]] = {}
    try:
        for rnd in range(args.rounds):
            order = ("stock", "tuned") if rnd % 2 == 0 else ("tuned", "stock")
            for setting in order:
                vspec = with_timers(spec, setting)
                cluster(vspec, credentials)
                for fault in faults:
                    wait_healthy(vspec, credentials)
                    report = failover_drill(vspec, credentials, fault, fault != "switchover")
                    reports.setdefault((setting, fault), []).append(report)
                    print(
                        f"round {rnd + 1} {setting:5} {fault:10} gap {report['write_gap_s']} s"
                        f", site gap {report['site_gap_s']} s"
                        f", leader after {report['leader_after_fault_s']} s, lost "
                        f"{report['acked_writes_lost']}, {report['old_primary']}",
                        flush=True,
                    )
    finally:
        if not args.keep:
            droplets.destroy_stack(do, spec)
    print_table(reports, args.rounds)


def print_table(reports: dict[tuple[str, str], list[dict]], rounds: int) -> None:
    print(f"\nfailover of {STACK} (compact, synchronous), {rounds} alternating rounds")
    print("write gap, site gap, leader after, healthy again: median (min-max) in s\n")
    print(
        "| setting | fault | n | write gap | max gap | lost acks | site gap | leader after | "
        "healthy again | anchor (FIELD-NOTES) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (setting, fault), rs in sorted(reports.items()):
        gaps = [r["write_gap_s"] for r in rs if r["write_gap_s"] is not None]
        anchor = ANCHORS.get((setting, fault))
        if fault == "switchover":
            anchor = f"{ANCHORS_PLANNED[setting]} (stop-patroni)"
        print(
            f"| {setting} | {fault} | {len(rs)} | {spread(gaps)} | "
            f"{max(gaps) if gaps else '-'} | {sum(r['acked_writes_lost'] for r in rs)} | "
            f"{spread([r['site_gap_s'] for r in rs if r['site_gap_s'] is not None])} | "
            f"{spread([r['leader_after_fault_s'] for r in rs])} | "
            f"{spread([r['healthy_again_s'] for r in rs])} | {anchor or '-'} |"
        )
    print("\nevery trial's write gap (s), in run order:")
    for (setting, fault), rs in sorted(reports.items()):
        print(f"  {setting:5} {fault:10} {[r['write_gap_s'] for r in rs]}")
    print("\nthe old primary's return:")
    for (setting, fault), rs in sorted(reports.items()):
        counts = Counter(r["old_primary"] for r in rs)
        print(f"  {setting:5} {fault:10} " + "; ".join(f"{n}x {w}" for w, n in counts.items()))


if __name__ == "__main__":
    main()
