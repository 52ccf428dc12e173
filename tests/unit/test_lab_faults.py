"""The lab's fault rules (lab/nft.py::fault_rules): a full partition or power-off drops
every packet of the droplet; a partial partition only those between it and its peers."""

from __future__ import annotations

from lab.nft import fault_rules


def test_full_isolation_drops_everything_of_the_droplet() -> None:
    faults = {"7": {"addrs": ["10.0.0.7", "198.18.16.7"], "reasons": {"off": None}}}
    assert fault_rules(faults) == [
        "ip saddr { 10.0.0.7, 198.18.16.7 } drop",
        "ip daddr { 10.0.0.7, 198.18.16.7 } drop",
    ]


def test_partial_partition_drops_only_traffic_with_the_peers_both_ways() -> None:
    faults = {"7": {"addrs": ["10.0.0.7"], "reasons": {"partition": ["10.0.0.2", "10.0.0.3"]}}}
    assert fault_rules(faults) == [
        "ip saddr { 10.0.0.7 } ip daddr { 10.0.0.2, 10.0.0.3 } drop",
        "ip saddr { 10.0.0.2, 10.0.0.3 } ip daddr { 10.0.0.7 } drop",
    ]


def test_power_off_of_a_partially_partitioned_droplet_isolates_it_whole() -> None:
    faults = {
        "7": {"addrs": ["10.0.0.7"], "reasons": {"partition": ["10.0.0.2"], "off": None}},
        "8": {"addrs": ["10.0.0.8"], "reasons": {}},
    }
    rules = fault_rules(faults)
    assert "ip saddr { 10.0.0.7 } drop" in rules and "ip daddr { 10.0.0.7 } drop" in rules
    assert not any("10.0.0.8" in r for r in rules)


def test_no_faults_no_rules() -> None:
    assert fault_rules({}) == []
