"""Every file Lifeboat places on a host, rendered and read back: the values and the quoting
(pure rendering, no tool). The same files checked by the real tools (etcd, `patroni
--validate-config`, `systemd-analyze verify`, `haproxy -c`): tests/integration/test_templates.py,
which shares this module's helpers."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
import yaml

from blocks.stack import ROUTING_ROLE, StackSpec
from tasks.pitr import RestorePoint
from tasks.render import render

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PASSWORDS = {
    "postgres-superuser": "Su1perPw",
    "postgres-replication": "Re1plPw",
    "postgres-rewind": "Re1windPw",
    "patroni-restapi": "Ap1Pw",
    "haproxy-stats": "St1atsPw",
}
# systemd EnvironmentFile and sh read these identically: no quotes, $, ` or \ inside.
ENV_LINE = re.compile(r'^([A-Z][A-Z0-9_]*)="([^"\\$`]*)"$')


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        assert match, f'not a plain KEY="value" line: {line!r}'
        env[match[1]] = match[2]
    return env


def test_etcd_env_production_values() -> None:
    members = {"a-db-1": "10.10.0.2", "a-db-2": "10.10.0.3", "a-db-3": "10.10.0.4"}
    text = render(
        "etcd/etcd.env.j2",
        name="a-db-2",
        address="10.10.0.3",
        members=members,
        cluster_token="lifeboat-a",
    )
    env = parse_env_file(text)
    assert env["ETCD_DATA_DIR"] == "/var/lib/etcd/default"
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "http://10.10.0.3:2379"
    assert env["ETCD_INITIAL_CLUSTER"] == (
        "a-db-1=http://10.10.0.2:2380,a-db-2=http://10.10.0.3:2380,a-db-3=http://10.10.0.4:2380"
    )
    existing = render(
        "etcd/etcd.env.j2",
        name="a-db-2",
        address="10.10.0.3",
        members=members,
        cluster_token="lifeboat-a",
        cluster_state="existing",
    )
    assert parse_env_file(existing)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"


PEERS = {"postgres": ["10.10.0.5", "10.10.0.6"], "haproxy": ["10.10.0.9"]}


def patroni_yml(spec: StackSpec, address: str, etcd_hosts: list[str], **extra: object) -> str:
    return render(
        "patroni/patroni.yml.j2",
        spec=spec,
        name=f"{spec.name}-db-1",
        address=address,
        etcd_hosts=etcd_hosts,
        passwords=PASSWORDS,
        **{"peers": PEERS, "routing_role": ROUTING_ROLE, **extra},
    )


POINT = RestorePoint(
    stack="compact",
    bucket="lifeboat-compact",
    target=1796000000.5,
    backup_id="20261208T020000Z",
    key="compact/7412/backups/20261208T020000Z/base.tar.zst",
    sha256="ab" * 32,
    system_id="7412",
)


def test_patroni_yml_restores_from_another_stack_when_asked() -> None:
    """restore-cluster: a custom bootstrap extracting the source's backup, replaying to the
    target with the strict restore_command, then promoting; initdb stays for the rest."""
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    plain = yaml.safe_load(patroni_yml(spec, "10.20.0.5", ["10.20.0.2"]))
    assert "method" not in plain["bootstrap"]
    config = yaml.safe_load(patroni_yml(spec, "10.20.0.5", ["10.20.0.2"], restore=POINT))
    boot = config["bootstrap"]
    assert boot["method"] == "lifeboat_restore"
    method = boot["lifeboat_restore"]
    assert method["command"].split() == [
        "/usr/bin/python3",
        "/usr/local/lib/lifeboat/basebackup.py",
        "restore",
        "--source",
        "--key",
        POINT.key,
        "--sha256",
        POINT.sha256,
        "--pgdata",
        config["postgresql"]["data_dir"],
    ]
    assert method["no_params"] is True
    assert method["recovery_conf"] == {
        "restore_command": "/usr/local/lib/lifeboat/wal-restore --strict %f %p",
        "recovery_target_time": "2026-11-30 00:53:20.500000+00",
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
    }
    assert boot["dcs"] == plain["bootstrap"]["dcs"]


def test_patroni_yml_content() -> None:
    base = StackSpec.from_yaml(EXAMPLES / "article.yaml")
    data = base.model_dump()
    data["replication"] = "async"
    data["postgres"]["parameters"] = {"max_wal_senders": 16, "work_mem": "8MB", "jit": False}
    spec = StackSpec.model_validate(data)
    config = yaml.safe_load(patroni_yml(spec, "10.10.0.5", ["10.10.0.2", "10.10.0.3", "10.10.0.4"]))
    assert config["scope"] == "article" and config["namespace"] == "/lifeboat/"
    assert config["restapi"]["connect_address"] == "10.10.0.5:8008"
    assert config["restapi"]["authentication"] == {"username": "patroni", "password": "Ap1Pw"}
    assert config["etcd3"]["hosts"] == ["10.10.0.2:2379", "10.10.0.3:2379", "10.10.0.4:2379"]
    dcs = config["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 5, 7)
    assert dcs["synchronous_mode"] is False and dcs["synchronous_mode_strict"] is False
    assert dcs["postgresql"]["use_pg_rewind"] is True and dcs["postgresql"]["use_slots"] is True
    params = dcs["postgresql"]["parameters"]
    assert params["wal_level"] == "replica" and params["password_encryption"] == "scram-sha-256"
    assert params["max_wal_senders"] == 16  # the spec overrides Lifeboat's default
    assert params["work_mem"] == "8MB" and params["jit"] is False
    assert "data-checksums" in config["bootstrap"]["initdb"]
    assert {"encoding": "UTF8"} in config["bootstrap"]["initdb"]
    pg = config["postgresql"]
    assert pg["bin_dir"] == "/usr/lib/postgresql/15/bin"
    assert pg["data_dir"] == "/var/lib/postgresql/15/patroni"
    assert pg["authentication"]["replication"] == {"username": "replicator", "password": "Re1plPw"}
    assert pg["authentication"]["rewind"]["password"] == "Re1windPw"
    assert pg["create_replica_methods"] == ["basebackup"]
    assert {"checkpoint": "fast"} in pg["basebackup"]
    # Replicas stay lenient: trouble fetching WAL is "not there yet", they stream or retry.
    assert pg["recovery_conf"]["restore_command"] == "/usr/local/lib/lifeboat/wal-restore %f %p"
    # By role and source droplet: each rule one role (or Lifeboat's pair) from one address.
    host_rules = {tuple(r.split()) for r in pg["pg_hba"] if r.startswith("host")}
    su, rewind, wp = "postgres", "rewind", (spec.wordpress.db_name, spec.wordpress.db_user)
    assert host_rules == {
        *(
            ("host", "replication", "replicator", f"{ip}/32", "scram-sha-256")
            for ip in PEERS["postgres"]
        ),
        *(
            ("host", "all", f"{su},{rewind}", f"{ip}/32", "scram-sha-256")
            for ip in PEERS["postgres"]
        ),
        ("host", *wp, "10.10.0.9/32", "scram-sha-256"),
        ("host", "postgres", "lifeboat_routing", "10.10.0.9/32", "scram-sha-256"),
    }
    assert config["tags"] == {
        "nofailover": False,
        "noloadbalance": False,
        "clonefrom": False,
        "nosync": False,
    }
    synchronous = yaml.safe_load(
        patroni_yml(base, "10.10.0.5", ["10.10.0.2"], tags={"nosync": True})
    )
    assert synchronous["bootstrap"]["dcs"]["synchronous_mode"] is True
    assert synchronous["tags"]["nosync"] is True


def test_patroni_yml_quotes_awkward_passwords() -> None:
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    awkward = {k: f"{k}: #\"\\x' {{" for k in PASSWORDS}
    config = yaml.safe_load(
        render(
            "patroni/patroni.yml.j2",
            spec=spec,
            name="n",
            address="10.20.0.2",
            etcd_hosts=["10.20.0.2"],
            passwords=awkward,
            peers=PEERS,
            routing_role=ROUTING_ROLE,
        )
    )
    assert (
        config["postgresql"]["authentication"]["superuser"]["password"]
        == (awkward["postgres-superuser"])
    )
    assert config["restapi"]["authentication"]["password"] == awkward["patroni-restapi"]


def test_missing_context_is_an_error() -> None:
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    context = {
        "spec": spec,
        "name": "n",
        "address": "10.20.0.2",
        "passwords": PASSWORDS,
        "peers": PEERS,
        "routing_role": ROUTING_ROLE,
    }
    with pytest.raises(jinja2.UndefinedError, match="etcd_hosts"):
        render("patroni/patroni.yml.j2", **context)
    with pytest.raises(jinja2.UndefinedError, match="patroni-restapi"):
        render("patroni/patroni.yml.j2", **{**context, "etcd_hosts": [], "passwords": {}})


def haproxy_cfg(spec: StackSpec, address: str) -> tuple[str, dict[str, str]]:
    postgres = {n.name: f"10.{i}.0.{10 + i}" for i, n in enumerate(spec.nodes_with("postgres"))}
    text = render(
        "haproxy/haproxy.cfg.j2",
        spec=spec,
        address=address,
        postgres_nodes=postgres,
        stats_password=PASSWORDS["haproxy-stats"],
    )
    return text, postgres


def test_haproxy_cfg_content() -> None:
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    text, _ = haproxy_cfg(spec, "10.20.0.5")
    sections = {s.split("\n", 1)[0]: s for s in re.split(r"\n(?=\S)", text)}
    primary, replicas, stats = (
        sections["listen primary"],
        sections["listen replicas"],
        sections["listen stats"],
    )
    defaults = sections["defaults"]
    for line in ("mode tcp", "retries 2", "timeout connect 4s", "timeout client 30m"):
        assert line in defaults
    assert "bind 10.20.0.5:5000" in primary and "option httpchk OPTIONS /primary" in primary
    assert "http-check expect status 200" in primary
    check = "default-server inter 1s fastinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions"
    assert check in primary and check in replicas
    assert "bind 10.20.0.5:5001" in replicas and "balance roundrobin" in replicas
    assert "option httpchk OPTIONS /replica?lag=10MB" in replicas
    # stats: private address only, password protected
    assert "bind 10.20.0.5:7000" in stats and "bind *" not in text and "0.0.0.0" not in text
    assert "stats auth lifeboat:St1atsPw" in stats
