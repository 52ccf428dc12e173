"""The provision runbook's pure decisions: which firewalls a stack gets, and when an
existing firewall counts as unchanged."""

from __future__ import annotations

from blocks.stack import StackSpec
from tasks.droplets import _firewalls, _same_rules


def droplets(spec: StackSpec) -> list[dict]:
    return [{"name": n.name, "id": 100 + i} for i, n in enumerate(spec.nodes())]


def ports_from(rules: list[dict], source: dict) -> set[str]:
    return {r["ports"] for r in rules if r["protocol"] == "tcp" and r["sources"] == source}


def test_cluster_ports_only_from_the_vpc_and_ssh_only_from_admins():
    spec = StackSpec.from_yaml("examples/article.yaml")
    base, web = _firewalls(spec, droplets(spec), lb_id="lb-1")
    assert base["tags"] == ["lifeboat:article"]
    assert ports_from(base["inbound_rules"], {"addresses": ["198.18.0.0/16"]}) == {"22"}
    vpc_ports = ports_from(base["inbound_rules"], {"addresses": ["10.10.0.0/16"]})
    assert vpc_ports == {"2379", "2380", "5432", "8008", "5000", "5001", "7000"}
    assert not any(r["ports"] == "80" for r in base["inbound_rules"])
    # HTTP reaches the WordPress droplets only, and only from the load balancer.
    wp_ids = {d["id"] for d in droplets(spec) if "-wp-" in d["name"]}
    assert set(web["droplet_ids"]) == wp_ids
    assert web["inbound_rules"] == [
        {"protocol": "tcp", "ports": "80", "sources": {"load_balancer_uids": ["lb-1"]}}
    ]


def test_no_web_firewall_without_a_load_balancer():
    spec = StackSpec.from_yaml("examples/compact.yaml")
    assert [f["name"] for f in _firewalls(spec, droplets(spec), lb_id=None)] == ["lifeboat-compact"]


def test_rules_compare_as_sets_ignoring_empty_peer_kinds_and_port_spellings():
    want = [{"protocol": "tcp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}}]
    have = [
        {
            "protocol": "tcp",
            "ports": "0",
            "destinations": {"addresses": ["0.0.0.0/0"], "tags": [], "droplet_ids": []},
        }
    ]
    assert _same_rules(have, want)
    other = [{"protocol": "tcp", "ports": "22", "destinations": {"addresses": ["0.0.0.0/0"]}}]
    assert not _same_rules(other, want)
