"""The cluster runbook's pure decisions, on output captured from the real tools in the lab
(Patroni 4.1.5 GET /cluster, etcdctl 3.4 -w json, HAProxy 2.6 `show stat`)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from tasks import etcd, guc, haproxy, packages, patroni
from tasks.context import Remote, Secrets
from tasks.hosts import load_private_key
from tasks.probes import parse_show

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# GET /cluster of a healthy three-member synchronous cluster (lab, Patroni 4.1.5).
CLUSTER = json.loads(
    '{"members": [{"name": "clx-db-1", "role": "leader", "state": "running", "api_url": '
    '"http://10.77.0.2:8008/patroni", "host": "10.77.0.2", "port": 5432, "timeline": 1}, '
    '{"name": "clx-db-2", "role": "replica", "state": "streaming", "api_url": '
    '"http://10.77.0.3:8008/patroni", "host": "10.77.0.3", "port": 5432, "timeline": 1, '
    '"receive_lag": 0, "receive_lsn": "0/4048B38", "replay_lag": 0, "replay_lsn": '
    '"0/4048B38", "lag": 0, "lsn": "0/4048B38"}, {"name": "clx-db-3", "role": '
    '"sync_standby", "state": "streaming", "api_url": "http://10.77.0.4:8008/patroni", '
    '"host": "10.77.0.4", "port": 5432, "timeline": 1, "receive_lag": 0, "receive_lsn": '
    '"0/4048B38", "replay_lag": 0, "replay_lsn": "0/4048B38", "lag": 0, "lsn": '
    '"0/4048B38"}], "scope": "clx"}'
)
NAMES = ["clx-db-1", "clx-db-2", "clx-db-3"]


def cluster_with(**changes: dict) -> dict:
    """CLUSTER with some members' fields changed: cluster_with(**{"clx-db-2": {...}})."""
    data = copy.deepcopy(CLUSTER)
    for m in data["members"]:
        m.update(changes.get(m["name"], {}))
    return data


# --- Patroni /cluster --------------------------------------------------------------------


def test_parse_cluster_reads_roles_states_timelines_and_lag():
    members = {m.name: m for m in patroni.parse_cluster(CLUSTER)}
    assert members["clx-db-1"].is_leader and members["clx-db-1"].lag is None
    assert members["clx-db-3"].role == "sync_standby" and members["clx-db-3"].lag == 0
    assert {m.timeline for m in members.values()} == {1}


def test_healthy_cluster_has_no_problems():
    assert patroni.assess_cluster(patroni.parse_cluster(CLUSTER), NAMES, True) == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"clx-db-2": {"replay_lag": 4096, "lag": 4096}}, "clx-db-2 lags 4096 bytes"),
        ({"clx-db-2": {"lag": "unknown"}}, "clx-db-2 lags unknown bytes"),
        ({"clx-db-2": {"state": "starting"}}, "clx-db-2 is 'starting', not streaming"),
        ({"clx-db-3": {"timeline": 2}}, "clx-db-3 is on timeline 2, leader on 1"),
        ({"clx-db-2": {"role": "leader"}}, "2 leaders (clx-db-1, clx-db-2)"),
        ({"clx-db-1": {"role": "replica"}}, "0 leaders (none)"),
        ({"clx-db-1": {"state": "stopped"}}, "leader clx-db-1 is 'stopped', not running"),
        ({"clx-db-3": {"role": "replica"}}, "no synchronous standby"),
    ],
)
def test_unhealthy_clusters_are_named(changes, problem):
    problems = patroni.assess_cluster(
        patroni.parse_cluster(cluster_with(**changes)), NAMES, synchronous=True
    )
    assert any(problem in p for p in problems), problems


def test_missing_and_unexpected_members():
    members = patroni.parse_cluster(CLUSTER)
    problems = patroni.assess_cluster(members[:2], NAMES, False)
    assert problems == ["not in the cluster: clx-db-3"]
    problems = patroni.assess_cluster(members, NAMES[:2], False)
    assert problems == ["unexpected members: clx-db-3"]


def test_async_cluster_needs_no_synchronous_standby():
    data = cluster_with(**{"clx-db-3": {"role": "replica"}})
    assert patroni.assess_cluster(patroni.parse_cluster(data), NAMES, synchronous=False) == []


def test_restart_order_replicas_first_sync_standby_last_of_them_leader_last():
    members = [replace(m, pending_restart=True) for m in patroni.parse_cluster(CLUSTER)]
    assert patroni.restart_order(members) == ["clx-db-2", "clx-db-3", "clx-db-1"]


def test_restart_order_only_pending_members():
    members = patroni.parse_cluster(CLUSTER)
    members = [replace(m, pending_restart=m.name != "clx-db-2") for m in members]
    assert patroni.restart_order(members) == ["clx-db-3", "clx-db-1"]
    assert patroni.restart_order(patroni.parse_cluster(CLUSTER)) == []
    assert patroni.restart_order(patroni.parse_cluster(CLUSTER), only_pending=False) == [
        "clx-db-2",
        "clx-db-3",
        "clx-db-1",
    ]


# --- dynamic configuration ---------------------------------------------------------------


@pytest.fixture
def spec() -> StackSpec:
    return StackSpec.from_yaml(EXAMPLES / "compact.yaml")


def test_desired_dynamic_is_bootstrap_dcs_from_the_spec(spec):
    data = spec.model_dump()
    data["postgres"]["parameters"] = {"work_mem": "8MB", "max_connections": 150}
    desired = patroni.desired_dynamic(StackSpec.model_validate(data))
    assert desired["ttl"] == 20 and desired["loop_wait"] == 5 and desired["retry_timeout"] == 7
    assert desired["synchronous_mode"] is True
    params = desired["postgresql"]["parameters"]
    assert params["work_mem"] == "8MB" and params["max_connections"] == 150
    assert params["wal_level"] == "replica" and desired["postgresql"]["use_pg_rewind"] is True
    assert "unused" not in json.dumps(desired)  # no password placeholder leaks into the DCS


def test_config_patch_empty_when_the_dcs_matches(spec):
    desired = patroni.desired_dynamic(spec)
    current = copy.deepcopy(desired)
    current["pause"] = True  # an operator's maintenance mode is not ours to undo
    current["postgresql"]["parameters"]["max_connections"] = "100"  # str vs int: same
    desired["postgresql"]["parameters"]["max_connections"] = 100
    assert patroni.config_patch(current, desired) == {}


def test_config_patch_sets_changed_and_removes_dropped_parameters(spec):
    desired = patroni.desired_dynamic(spec)
    current = copy.deepcopy(desired)
    current["postgresql"]["parameters"]["work_mem"] = "8MB"
    current["ttl"] = 30
    desired["postgresql"]["parameters"]["max_connections"] = 150
    patch = patroni.config_patch(current, desired)
    assert patch == {
        "ttl": 20,
        "postgresql": {"parameters": {"max_connections": 150, "work_mem": None}},
    }
    assert patroni.changed_parameters(patch) == {"max_connections": 150, "work_mem": None}


def test_config_patch_bool_compares_like_patroni(spec):
    desired = patroni.desired_dynamic(spec)
    current = copy.deepcopy(desired)
    current["synchronous_mode"] = "true"
    assert patroni.config_patch(current, desired) == {}
    current["synchronous_mode"] = False
    assert patroni.config_patch(current, desired) == {"synchronous_mode": True}


# --- PostgreSQL settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "setting", "unit", "vartype", "same"),
    [
        ("8MB", "8192", "kB", "integer", True),  # work_mem
        ("8MB", "4096", "kB", "integer", False),
        ("128MB", "16384", "8kB", "integer", True),  # shared_buffers
        ("1GB", "1024", "MB", "integer", True),  # max_wal_size
        ("5min", "300", "s", "integer", True),  # checkpoint_timeout
        ("250ms", "250", "ms", "integer", True),
        (8192, "8192", "kB", "integer", True),  # a bare number is in the setting's unit
        (150, "150", None, "integer", True),  # max_connections
        (150, "100", None, "integer", False),
        ("on", "on", None, "bool", True),
        (True, "on", None, "bool", True),
        ("off", "on", None, "bool", False),
        ("0.9", "0.9", None, "real", True),
        ("replica", "replica", None, "enum", True),
        ("logical", "replica", None, "enum", False),
        ("8XB", "8192", "kB", "integer", False),
    ],
)
def test_guc_matches(wanted, setting, unit, vartype, same):
    assert guc.matches(wanted, setting, unit, vartype) is same


# --- etcd --------------------------------------------------------------------------------

EXPECTED = {"clx-db-1": "10.77.0.2", "clx-db-2": "10.77.0.3", "clx-db-3": "10.77.0.4"}
LEADER = 2290019498405186650
IDS = {"clx-db-1": 5852286434057499964, "clx-db-2": 17768728781842570853, "clx-db-3": LEADER}


def member_list() -> dict:
    return {
        "members": [
            {"ID": IDS[n], "name": n, "peerURLs": [f"http://{ip}:2380"]}
            for n, ip in EXPECTED.items()
        ]
    }


def status(leader_of: dict[str, int] | None = None) -> list[dict]:
    leader_of = leader_of or {}
    return [
        {
            "Endpoint": f"http://{ip}:2379",
            "Status": {
                "header": {"member_id": IDS[n]},
                "version": "3.4.23",
                "leader": leader_of.get(n, LEADER),
                "raftTerm": 2,
            },
        }
        for n, ip in EXPECTED.items()
    ]


def health(down: tuple[str, ...] = ()) -> list[dict]:
    return [
        {"endpoint": f"http://{ip}:2379", "health": n not in down} for n, ip in EXPECTED.items()
    ]


# A member replaced: clx-db-2 lost, its new droplet at 10.77.0.9 (or at the old address).
NEW = {**EXPECTED, "clx-db-2": "10.77.0.9"}


def test_a_replaced_members_old_record_goes_before_it_is_added():
    assert etcd.admission(member_list(), "clx-db-2", "10.77.0.9", NEW) == (
        [IDS["clx-db-2"]],
        True,
    )
    # The same address again (an IP handed out twice): still the old record, by name.
    assert etcd.admission(member_list(), "clx-db-2", "10.77.0.3", EXPECTED) == (
        [IDS["clx-db-2"]],
        True,
    )


def test_an_earlier_attempts_member_add_is_kept_or_cleared():
    listed = member_list()
    listed["members"] = [m for m in listed["members"] if m["name"] != "clx-db-2"]
    unstarted = {"ID": 42, "peerURLs": ["http://10.77.0.9:2380"]}  # added, never started
    listed["members"].append(unstarted)
    assert etcd.admission(listed, "clx-db-2", "10.77.0.9", NEW) == ([], False)
    # An attempt from a droplet since gone again (another address): removed, then added.
    assert etcd.admission(listed, "clx-db-2", "10.77.0.10", {**NEW, "clx-db-2": "10.77.0.10"}) == (
        [42],
        True,
    )


def test_only_settings_etcd_reads_again_ask_for_a_restart():
    old = 'ETCD_NAME="a"\nETCD_INITIAL_CLUSTER="a=http://1:2380"\nETCD_ELECTION_TIMEOUT="2000"\n'
    moved = old.replace("1:2380", "9:2380")
    assert etcd._settings(old) == etcd._settings(moved)
    assert etcd._settings(old) != etcd._settings(old.replace("2000", "1000"))
    assert etcd._cluster_state("ETCD_INITIAL_CLUSTER_STATE='existing'\n") == "existing"
    assert etcd._cluster_state(old) is None


def test_etcd_healthy_with_one_leader():
    result = etcd.assess(EXPECTED, member_list(), status(), health())
    assert result.ok, result.problems
    assert [m["name"] for m in result.members if m["leader"]] == ["clx-db-3"]


def test_etcd_unhealthy_member_and_missing_status():
    sts = [s for s in status() if "10.77.0.2" not in s["Endpoint"]]
    result = etcd.assess(EXPECTED, member_list(), sts, health(down=("clx-db-1",)))
    assert result.problems == ["clx-db-1 (10.77.0.2) is not healthy"]


def test_etcd_members_disagreeing_on_the_leader():
    result = etcd.assess(EXPECTED, member_list(), status({"clx-db-1": IDS["clx-db-1"]}), health())
    assert any("do not agree on one leader" in p for p in result.problems)


def test_etcd_debian_default_member_is_not_ours():
    """Debian's single-node etcd: named after the host, peer URL on localhost."""
    listed = {"members": [{"ID": 1, "name": "clx-db-1", "peerURLs": ["http://localhost:2380"]}]}
    result = etcd.assess(EXPECTED, listed, [], [])
    assert "clx-db-1 advertises ['http://localhost:2380'], not 10.77.0.2:2380" in result.problems
    assert "clx-db-2 is not a member of the etcd cluster" in result.problems
    assert not result.ok


# --- HAProxy -----------------------------------------------------------------------------

SHOW_STAT = """# pxname,svname,qcur,status,weight
primary,FRONTEND,,OPEN,
primary,clx-db-1,0,UP,1
primary,clx-db-2,0,DOWN,1
primary,clx-db-3,0,DOWN,1
primary,BACKEND,0,UP,1
replicas,FRONTEND,,OPEN,
replicas,clx-db-1,0,DOWN,1
replicas,clx-db-2,0,UP,1
replicas,clx-db-3,0,UP 1/2,1
replicas,BACKEND,0,UP,2
stats,FRONTEND,,OPEN,
"""


def test_parse_stat_and_assess_backends():
    backends = haproxy.parse_stat(SHOW_STAT)
    assert backends["primary"] == {"clx-db-1": "UP", "clx-db-2": "DOWN", "clx-db-3": "DOWN"}
    assert backends["replicas"]["clx-db-3"] == "UP"  # "UP 1/2": going down, still routed
    assert "stats" not in backends
    assert haproxy.assess_backends(backends, "clx-db-1", ["clx-db-2", "clx-db-3"]) == []
    problems = haproxy.assess_backends(backends, "clx-db-2", ["clx-db-1", "clx-db-3"])
    assert len(problems) == 2 and "expected [clx-db-2]" in problems[0]


# --- packages and systemd ----------------------------------------------------------------


def test_missing_packages_from_dpkg_query():
    out = "openssh-server installed\npostgresql-15 installed\nhaproxy config-files\n"
    wanted = ["openssh-server", "postgresql-15", "haproxy", "etcd-server"]
    assert packages.missing_from(out, wanted) == ["haproxy", "etcd-server"]


def test_manifest_has_no_debian_patroni():
    names = packages.manifest()
    assert "postgresql-15" in names and "etcd-server" in names
    assert "patroni" not in names


def test_parse_systemctl_show_in_any_property_order():
    text = (
        "ActiveEnterTimestamp=Thu 2026-11-26 12:42:43 UTC\nId=haproxy.service\n\n"
        "Id=etcd.service\nActiveEnterTimestamp=\n"
    )
    assert parse_show(text) == {"haproxy": "Thu 2026-11-26 12:42:43 UTC", "etcd": ""}


# --- secrets stay out of reprs -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_private_keys_of_each_type_load(tmp_path, kind):
    import subprocess

    path = tmp_path / "id"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, timeout=60
    )
    assert (
        load_private_key(path.read_text())
        .get_name()
        .startswith({"ed25519": "ssh-ed25519", "rsa": "ssh-rsa", "ecdsa": "ecdsa-sha2"}[kind])
    )


def test_remote_and_secrets_never_show_values():
    remote = Remote("-----BEGIN OPENSSH PRIVATE KEY-----\nsecretkeymaterial", {"1/x": "k"})
    assert "secretkeymaterial" not in repr(remote) and "PRIVATE" not in str(remote)
    secrets = Secrets({"postgres-superuser": "Pw1secretvalue"})
    assert "Pw1secretvalue" not in repr(secrets) and "Pw1secretvalue" not in str(secrets)
    assert secrets["postgres-superuser"] == "Pw1secretvalue"
    assert secrets.reveal() == {"postgres-superuser": "Pw1secretvalue"}


def test_the_leader_hands_over_to_the_sync_standby_before_its_restart():
    members = [
        patroni.Member("db-1", "leader", "running"),
        patroni.Member("db-2", "replica", "streaming"),
        patroni.Member("db-3", "sync_standby", "streaming"),
    ]
    assert patroni._successor(members, ["db-2", "db-3"]) == "db-3"
    no_sync = [members[0], members[1], patroni.Member("db-3", "replica", "streaming")]
    assert patroni._successor(no_sync, ["db-3"]) == "db-3"  # one that runs the new settings
    with pytest.raises(patroni.PatroniError, match="no running replica"):
        patroni._successor(members[:1], [])
