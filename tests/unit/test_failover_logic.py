"""The failover drill's arithmetic on a probe record: the write gap is the longest stretch
without an acknowledgement that ends after the fault began, and the chart marks it."""

from __future__ import annotations

from tasks.failover import how_it_returned, timeline_chart, write_gap


def _record(oks: list[tuple[float, bool]]) -> list[dict]:
    return [
        {"key": f"k{i}", "sent": t - 0.01, "done": t, "ok": ok} for i, (t, ok) in enumerate(oks)
    ]


def test_the_gap_is_the_longest_hole_after_the_fault_not_the_next_ack():
    # The fault at t=1.0; writes go on until 1.2 (a switchover takes a while), then fail
    # until 3.0; an earlier, shorter hole before the fault does not count.
    rec = _record([(0.1, True), (0.5, True), (1.1, True), (1.2, True)])
    rec += _record([(t / 10, False) for t in range(13, 30)])
    rec += _record([(3.0, True), (3.05, True)])
    gap = write_gap(rec, fault_at=1.0)
    assert (gap.last_ack_before, gap.first_ack_after) == (1.2, 3.0)
    assert round(gap.seconds, 2) == 1.8 and gap.failed == 17 and gap.acked == 6


def test_no_ack_after_the_fault_is_no_gap_but_a_failure_to_report():
    gap = write_gap(_record([(0.5, True), (1.5, False)]), fault_at=1.0)
    assert gap.seconds is None and gap.last_ack_before == 0.5


def test_the_chart_shows_acks_failures_and_the_fault():
    chart = timeline_chart(_record([(0.0, True), (0.5, False), (1.0, True)]), 0.5, 0.25)
    assert chart.splitlines()[1] == "#.|.#".replace(".", " ")


def test_the_flow_offers_the_faults_the_tasks_know():
    from typing import get_args

    from flows.failover import Fault
    from tasks.failover import DESTRUCTIVE, FAULTS

    assert get_args(Fault) == FAULTS
    assert set(FAULTS) - {"switchover"} == DESTRUCTIVE


def test_an_etcd_partition_cuts_the_etcd_ports_to_the_peers_only():
    from tasks.failover import partition_rules

    script = partition_rules("etcd-partition", ["10.0.0.3", "10.0.0.4"])
    assert "elements = { 10.0.0.3, 10.0.0.4 }" in script
    assert "policy accept" in script and "policy drop" not in script
    assert script.count("{ 2379, 2380 } drop") == 4  # client and peer ports, both ways


def test_a_partition_keeps_ssh_and_loopback_only():
    from tasks.failover import partition_rules

    script = partition_rules("partition", [])
    assert script.count("policy drop") == 2
    assert "tcp dport 22 accept" in script and "tcp sport 22 accept" in script


def test_an_etcd_partition_without_peers_is_refused():
    import pytest

    from tasks.failover import DrillRefused, partition_rules

    with pytest.raises(DrillRefused, match="etcd members other than the primary"):
        partition_rules("etcd-partition", [])


def test_the_old_primarys_return_read_from_patronis_journal():
    """Lines as Patroni 4.1 logs them (patroni/postgresql/rewind.py, __init__.py)."""
    rewound = (
        "INFO: running pg_rewind from user=rewind host=10.20.0.3 port=5432\n"
        "INFO: pg_rewind exit code=0\n"
    )
    assert how_it_returned(rewound, still_leader=False) == "rejoined as a replica after pg_rewind"
    assert how_it_returned("", still_leader=False) == "rejoined as a replica without pg_rewind"
    assert how_it_returned("", still_leader=True).startswith("kept the leader role")
    failed = "INFO: running pg_rewind from host=x\nINFO: pg_rewind exit code=1\n"
    assert how_it_returned(failed, still_leader=False).startswith("pg_rewind did not succeed")
    removed = failed + "INFO: Removing data directory: /var/lib/postgresql/15/patroni\n"
    assert how_it_returned(removed, still_leader=False).startswith("rebuilt from the new leader")


def test_the_site_probe_records_pages_and_its_gap_spans_the_failing_ones():
    """A real HTTP server on loopback that fails for a while, as the site does while the
    database has no primary: the probe's record gives the site's gap like the writes'."""
    import http.server
    import threading
    import time

    from tasks.failover import SiteProbe

    failing = threading.Event()
    seen_hosts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen_hosts.append(self.headers["Host"])
            self.send_response(500 if failing.is_set() else 200)
            self.end_headers()
            self.wfile.write(b"page")

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with SiteProbe(f"http://127.0.0.1:{server.server_port}/", "site.test", 0.05) as probe:
            time.sleep(0.3)
            fault_at = time.time()
            failing.set()
            time.sleep(0.5)
            failing.clear()
            back = time.time()
            time.sleep(0.3)
            assert probe.served_since(back)
    finally:
        server.shutdown()
    gap = write_gap(probe.record, fault_at)
    assert 0.5 <= gap.seconds < 1.2, gap
    assert gap.failed >= 3 and gap.acked >= 6
    assert set(seen_hosts) == {"site.test"}
    assert {r["error"] for r in probe.record if not r["ok"]} == {"HTTP 500"}
