"""The stack spec: examples load, derived nodes/tags, and every bad spec fails with a
message that says what to change."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from blocks.stack import SpecError, StackSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LAB_REGIONS = {"nyc3", "fra1", "ams3"}
LAB_SIZES = {"s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"}

BASE: dict[str, Any] = {
    "name": "shop",
    "region": "nyc3",
    "vpc_cidr": "10.30.0.0/16",
    "admin_cidrs": ["198.18.0.0/16"],
    "groups": [
        {"name": "db", "count": 3, "size": "s-1vcpu-1gb", "roles": ["etcd", "postgres"]},
        {"name": "web", "count": 2, "size": "s-1vcpu-1gb", "roles": ["haproxy", "wordpress"]},
    ],
}


def spec(**changes: Any) -> StackSpec:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return StackSpec.model_validate(data)


def rejected(match: str, **changes: Any) -> None:
    with pytest.raises(ValidationError, match=match):
        spec(**changes)


# --- examples and derived data ---------------------------------------------------------


def test_article_example() -> None:
    s = StackSpec.from_yaml(EXAMPLES / "article.yaml")
    assert (s.name, s.region, s.vpc_cidr) == ("article", "nyc3", "10.10.0.0/16")
    assert [len(s.nodes_with(r)) for r in ("etcd", "postgres", "haproxy", "wordpress")] == [
        3,
        3,
        1,
        2,
    ]
    assert len(s.nodes()) == 9
    s.check_catalog(LAB_REGIONS, LAB_SIZES)


def test_compact_example() -> None:
    s = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    assert s.vpc_cidr == "10.20.0.0/16"
    assert [n.name for n in s.nodes()] == [
        "compact-db-1",
        "compact-db-2",
        "compact-db-3",
        "compact-web-1",
        "compact-web-2",
    ]
    assert s.nodes_with("etcd") == s.nodes_with("postgres")
    assert s.nodes_with("haproxy") == s.nodes_with("wordpress")
    s.check_catalog(LAB_REGIONS, LAB_SIZES)


def test_measured_defaults() -> None:
    s = spec()
    assert (s.patroni.ttl, s.patroni.loop_wait, s.patroni.retry_timeout) == (20, 5, 7)
    assert s.replication == "synchronous" and s.synchronous_mode
    h = s.haproxy
    assert (h.primary_port, h.replica_port, h.stats_port) == (5000, 5001, 7000)
    assert (h.check_inter, h.fastinter, h.fall, h.rise) == ("1s", "500ms", 2, 1)
    assert h.replica_max_lag == "10MB"
    assert s.image == "debian-12-x64" and s.postgres.version == 15
    assert s.backup.archive_timeout == 60
    assert spec(replication="async").synchronous_mode is False


def test_nodes_names_tags_and_roles() -> None:
    s = spec()
    web = s.nodes()[3]
    assert web.name == "shop-web-1" and web.group == "web" and web.size == "s-1vcpu-1gb"
    assert web.roles == ("haproxy", "wordpress")
    assert web.tags == ("lifeboat:shop", "role:haproxy", "role:wordpress")
    # roles are kept in canonical order whatever the YAML order
    s2 = spec(groups=[{**BASE["groups"][0], "roles": ["postgres", "etcd"]}, BASE["groups"][1]])
    assert s2.nodes()[0].tags == ("lifeboat:shop", "role:etcd", "role:postgres")
    with pytest.raises(ValueError, match="unknown role 'db'"):
        s.nodes_with("db")


def test_from_yaml_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: shop\nregion: nyc3\nvpc_cidr: 10.0.0.0/16\nadmin_cidrs: []\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: admin_cidrs: .*at least 1"):
        StackSpec.from_yaml(bad)
    bad.write_text("- not a mapping\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        StackSpec.from_yaml(bad)


def test_typo_in_key_is_an_error() -> None:
    rejected("Extra inputs are not permitted", patroni={"tll": 30})


def test_single_node_stack() -> None:
    one = [{"name": "all", "count": 1, "roles": ["etcd", "postgres", "haproxy", "wordpress"]}]
    s = spec(groups=one, single_node=True)
    assert [n.name for n in s.nodes()] == ["shop-all-1"]


# --- each bad spec, with its message ---------------------------------------------------


@pytest.mark.parametrize("count", [2, 4])
def test_even_etcd_count(count: int) -> None:
    groups = [
        {"name": "etcd", "count": count, "roles": ["etcd"]},
        {"name": "pg", "count": 2, "roles": ["postgres", "haproxy"]},
    ]
    rejected(f"etcd has {count} member\\(s\\): it needs 3, 5 or 7", groups=groups)


def test_one_etcd_without_single_node() -> None:
    groups = [
        {"name": "etcd", "count": 1, "roles": ["etcd"]},
        {"name": "pg", "count": 2, "roles": ["postgres", "haproxy"]},
    ]
    rejected("or set single_node: true", groups=groups)


def test_no_etcd() -> None:
    groups = [{"name": "pg", "count": 2, "roles": ["postgres", "haproxy"]}]
    rejected("etcd has 0 member", groups=groups)


def test_one_postgres_without_single_node() -> None:
    groups = [
        {"name": "db", "count": 3, "roles": ["etcd"]},
        {"name": "pg", "count": 1, "roles": ["postgres", "haproxy"]},
    ]
    rejected("1 postgres node: failover needs at least 2.*single_node: true", groups=groups)


def test_duplicate_group_names() -> None:
    groups = [*BASE["groups"], {"name": "web", "count": 1, "roles": ["wordpress"]}]
    rejected("duplicate group name\\(s\\) web", groups=groups)


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.30.0.0/33", "is not a network address: write a network like '10.10.0.0/16'"),
        ("10.30.0.1/16", "is not a network address: did you mean '10.30.0.0/16'\\?"),
        ("banana", "'banana' is not a network address"),
        ("8.8.0.0/16", "not a private IPv4 range"),
        ("10.0.0.0/8", "between /16 and /28"),
    ],
)
def test_bad_vpc_cidr(cidr: str, message: str) -> None:
    rejected(message, vpc_cidr=cidr)


def test_bad_admin_cidr() -> None:
    rejected(
        "admin_cidrs: '198.18.0.1/16' .* did you mean '198.18.0.0/16'",
        admin_cidrs=["198.18.0.1/16"],
    )


def test_world_admin_needs_flag() -> None:
    rejected("opens SSH to the whole internet.*allow_world_admin: true", admin_cidrs=["0.0.0.0/0"])
    assert spec(admin_cidrs=["0.0.0.0/0"], allow_world_admin=True).admin_cidrs == ["0.0.0.0/0"]


def test_patroni_timer_rule() -> None:
    rejected(
        r"loop_wait \+ 2\*retry_timeout <= ttl \(5 \+ 2\*10 = 25 > 20\): raise ttl to at least 25",
        patroni={"retry_timeout": 10},
    )
    assert spec(patroni={"ttl": 25, "retry_timeout": 10}).patroni.ttl == 25


def test_ttl_below_20() -> None:
    rejected("ttl 15 is below 20 s.*set ttl to 20 or more", patroni={"ttl": 15})


def test_no_haproxy() -> None:
    groups = [BASE["groups"][0], {"name": "web", "count": 2, "roles": ["wordpress"]}]
    rejected("no group has the haproxy role", groups=groups)


def test_unknown_role() -> None:
    groups = [BASE["groups"][0], {"name": "web", "count": 2, "roles": ["haproxy", "nginx"]}]
    rejected("unknown role 'nginx': roles are etcd, postgres, haproxy, wordpress", groups=groups)


@pytest.mark.parametrize("name", ["Shop", "shop_1", "-shop", "shop-", "1shop"])
def test_stack_name_must_be_dns_label(name: str) -> None:
    rejected("stack name .* must be a DNS label", name=name)


def test_droplet_name_too_long() -> None:
    rejected("longer than 63 characters", name="s" * 60)


def test_managed_postgres_parameter() -> None:
    rejected(
        "wal_level managed by Lifeboat/Patroni.*remove them",
        postgres={"parameters": {"wal_level": "minimal"}},
    )


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"archive_command": "/bin/true"}, "archive_command managed by Lifeboat"),
        ({"restore_command": "cp %f %p"}, "restore_command managed by Lifeboat"),
        ({"ssl": "on", "ssl_ciphers": "x"}, "ssl, ssl_ciphers managed by Lifeboat"),
        ({"recovery_target_time": "x"}, "recovery_target_time managed by Lifeboat"),
        ({"archive_timeout": 30}, "set by backup.archive_timeout: move it there"),
        ({"work_mem'; x": "1"}, "not a PostgreSQL parameter name"),
        ({"Work_Mem": "1"}, "not a PostgreSQL parameter name"),
    ],
)
def test_parameters_lifeboat_owns_and_bad_names_are_refused(params: dict, why: str) -> None:
    rejected(why, postgres={"parameters": params})


def test_an_extension_parameter_is_allowed() -> None:
    assert spec(postgres={"parameters": {"pg_stat_statements.max": 5000}})


def test_sync_mode_belongs_to_replication() -> None:
    rejected("move it there", patroni={"synchronous_mode": False})


def test_haproxy_port_clash() -> None:
    rejected("haproxy.stats_port 8008 is patroni's port", haproxy={"stats_port": 8008})
    rejected("haproxy ports must differ", haproxy={"replica_port": 5000})


def test_haproxy_time_format() -> None:
    rejected("'1 sec' is not an HAProxy time", haproxy={"check_inter": "1 sec"})


def test_unknown_region_and_size() -> None:
    s = spec(region="sfo9", groups=[{**BASE["groups"][0], "size": "huge"}, BASE["groups"][1]])
    with pytest.raises(SpecError) as err:
        s.check_catalog(LAB_REGIONS, LAB_SIZES)
    assert "region 'sfo9' is not offered: choose one of ams3, fra1, nyc3" in str(err.value)
    assert "group 'db': size 'huge' is not offered" in str(err.value)


@pytest.mark.parametrize("schedule", ["daily", "0 3 * *", "61 3 * * *"])
def test_backup_schedule_must_be_cron(schedule: str) -> None:
    rejected(
        'backup.schedule .* is not a cron expression.*e.g. "0 3 \\* \\* \\*"',
        backup={"schedule": schedule},
    )


@pytest.mark.parametrize(
    "url", ["198.18.0.1:4200/api", "ftp://host/api", "http://host:4200", "http://h/api x"]
)
def test_events_api_url_must_be_a_prefect_api_url(url: str) -> None:
    rejected("events.api_url .* is not a Prefect API URL.*ending in /api", events={"api_url": url})


def test_events_api_url_may_be_left_out_or_given() -> None:
    assert spec().events.api_url is None
    given = spec(events={"api_url": "https://prefect.example.com/api"})
    assert given.events.api_url == "https://prefect.example.com/api"


def test_backup_retention_must_keep_something() -> None:
    rejected("greater than or equal to 1", backup={"retention_count": 0})
