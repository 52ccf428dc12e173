"""Every file Lifeboat places on a host, rendered and checked by the real tool:
etcd (three members started from the rendered env files), `patroni --validate-config`,
`systemd-analyze verify`, `haproxy -c`.

Needs on the host: etcd-server, postgresql-15 (Patroni checks bin_dir), haproxy, systemd.
All traffic stays on loopback addresses (127.x.y.z; Patroni refuses 127.0.0.1 itself as
a connect address)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
import yaml

from blocks.stack import StackSpec
from tasks.render import render

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PATRONI = Path(sys.executable).parent / "patroni"
PASSWORDS = {
    "postgres-superuser": "Su1perPw",
    "postgres-replication": "Re1plPw",
    "postgres-rewind": "Re1windPw",
    "patroni-restapi": "Ap1Pw",
    "haproxy-stats": "St1atsPw",
}
# systemd EnvironmentFile and sh read these identically: no quotes, $, ` or \ inside.
ENV_LINE = re.compile(r'^([A-Z][A-Z0-9_]*)="([^"\\$`]*)"$')


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y {package}")
    return path


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        assert match, f'not a plain KEY="value" line: {line!r}'
        env[match[1]] = match[2]
    return env


def http(url: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(url, data=data, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --- etcd -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three etcd members, each started with only the variables of its rendered
    /etc/default/etcd (data_dir pointed at a temp dir); yields {name: address}."""
    etcd = tool("etcd", "etcd-server")
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    members = {f"test-db-{i}": f"{net}.{10 + i}" for i in (1, 2, 3)}
    tmp = tmp_path_factory.mktemp("etcd")
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        for name, address in members.items():
            text = render(
                "etcd/etcd.env.j2",
                name=name,
                address=address,
                members=members,
                cluster_token="lifeboat-test",
                data_dir=str(tmp / name),
            )
            env = parse_env_file(text)
            log = tmp / f"{name}.log"
            with log.open("w") as out:
                env_vars = {"PATH": os.environ["PATH"], **env}
                proc = subprocess.Popen([etcd], env=env_vars, stdout=out, stderr=subprocess.STDOUT)
            procs.append((proc, log))
        deadline = time.monotonic() + 30
        for address in members.values():
            while http_ok(f"http://{address}:2379/health") is not True:
                dead = [log.read_text()[-2000:] for p, log in procs if p.poll() is not None]
                assert not dead, f"etcd exited:\n{dead[0]}"
                assert time.monotonic() < deadline, "etcd cluster not healthy after 30 s"
                time.sleep(0.2)
        yield members
    finally:
        # Throwaway data: no graceful leader hand-over needed.
        for proc, _ in procs:
            proc.kill()
        for proc, _ in procs:
            proc.wait(timeout=10)
        for _, log in procs:
            assert "unrecognized environment variable" not in log.read_text(), log.read_text()


def http_ok(url: str) -> bool:
    try:
        status, body = http(url)
    except OSError:
        return False
    return status == 200 and json.loads(body).get("health") == "true"


def test_etcd_env_forms_a_cluster(etcd_cluster: dict[str, str]) -> None:
    first = next(iter(etcd_cluster.values()))
    status, body = http(f"http://{first}:2379/v3/cluster/member/list", {})
    assert status == 200
    members = {m["name"]: m for m in json.loads(body)["members"]}
    assert set(members) == set(etcd_cluster)
    for name, address in etcd_cluster.items():
        assert members[name]["peerURLs"] == [f"http://{address}:2380"]
        assert members[name]["clientURLs"] == [f"http://{address}:2379"]
    # one leader, seen by every member
    leaders = set()
    for address in etcd_cluster.values():
        status, body = http(f"http://{address}:2379/v3/maintenance/status", {})
        assert status == 200
        leaders.add(json.loads(body)["leader"])
    assert len(leaders) == 1
    # v2 API off (Patroni uses v3 only)
    assert http(f"http://{first}:2379/v2/keys")[0] == 404


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


# --- Patroni ----------------------------------------------------------------------------


def patroni_yml(spec: StackSpec, address: str, etcd_hosts: list[str], **extra: object) -> str:
    return render(
        "patroni/patroni.yml.j2",
        spec=spec,
        name=f"{spec.name}-db-1",
        address=address,
        etcd_hosts=etcd_hosts,
        passwords=PASSWORDS,
        **extra,
    )


def validate_patroni(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PATRONI), "--validate-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("example", ["article", "compact"])
def test_patroni_yml_passes_validate_config(
    example: str, etcd_cluster: dict[str, str], tmp_path: Path
) -> None:
    tool("postgres", "postgresql-15")  # only a hint: Patroni checks bin_dir itself
    spec = StackSpec.from_yaml(EXAMPLES / f"{example}.yaml")
    address = next(iter(etcd_cluster.values()))
    path = tmp_path / "patroni.yml"
    # data_dir must not exist (or be a valid cluster); a fresh path under tmp is what a
    # new droplet has.
    path.write_text(
        patroni_yml(spec, address, list(etcd_cluster.values()), data_dir=str(tmp_path / "pg"))
    )
    result = validate_patroni(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_patroni_validation_can_fail(etcd_cluster: dict[str, str], tmp_path: Path) -> None:
    """The validator really checks: 127.0.0.1 as connect address is refused."""
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    path = tmp_path / "patroni.yml"
    path.write_text(patroni_yml(spec, "127.0.0.1", list(etcd_cluster.values())))
    result = validate_patroni(path)
    assert result.returncode != 0
    assert "connect_address" in result.stdout + result.stderr


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
    host_rules = [r for r in pg["pg_hba"] if r.startswith("host")]
    assert "host replication replicator 10.10.0.0/16 scram-sha-256" in host_rules
    # nothing from outside the VPC (and loopback), nothing weaker than scram
    for rule in host_rules:
        assert rule.split()[3] in ("10.10.0.0/16", "127.0.0.1/32") and rule.endswith(
            "scram-sha-256"
        )
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
        )
    )
    assert (
        config["postgresql"]["authentication"]["superuser"]["password"]
        == (awkward["postgres-superuser"])
    )
    assert config["restapi"]["authentication"]["password"] == awkward["patroni-restapi"]


def test_missing_context_is_an_error() -> None:
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    context = {"spec": spec, "name": "n", "address": "10.20.0.2", "passwords": PASSWORDS}
    with pytest.raises(jinja2.UndefinedError, match="etcd_hosts"):
        render("patroni/patroni.yml.j2", **context)
    with pytest.raises(jinja2.UndefinedError, match="patroni-restapi"):
        render("patroni/patroni.yml.j2", **{**context, "etcd_hosts": [], "passwords": {}})


# --- systemd ----------------------------------------------------------------------------


def test_patroni_service_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    unit = tmp_path / "patroni.service"
    unit.write_text(render("patroni/patroni.service.j2"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # The only complaint allowed on a test host: Patroni's virtualenv exists on droplets only.
    missing = "patroni.service: Command /opt/patroni/bin/patroni is not executable"
    if Path("/opt/patroni/bin/patroni").exists():
        assert result.returncode == 0 and lines == [], lines
    else:
        assert [line for line in lines if not line.startswith(missing)] == [], lines
    text = unit.read_text()
    for directive in (
        "ExecStart=/opt/patroni/bin/patroni /etc/patroni/patroni.yml",
        "User=postgres",
        "KillMode=process",
        "Restart=on-failure",
        "After=network-online.target",
    ):
        assert directive in text


def test_systemd_analyze_catches_bad_units(tmp_path: Path) -> None:
    """The check above can fail: an unknown directive is reported."""
    analyze = tool("systemd-analyze", "systemd")
    unit = tmp_path / "patroni.service"
    unit.write_text(render("patroni/patroni.service.j2").replace("KillMode=", "KilMode="))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key 'KilMode'" in result.stdout + result.stderr


# --- HAProxy ----------------------------------------------------------------------------


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


@pytest.mark.parametrize("example", ["article", "compact"])
def test_haproxy_cfg_passes_haproxy_check(example: str, tmp_path: Path) -> None:
    haproxy = tool("haproxy", "haproxy")
    spec = StackSpec.from_yaml(EXAMPLES / f"{example}.yaml")
    text, postgres = haproxy_cfg(spec, "10.10.0.20")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    result = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "WARNING" not in output and "ALERT" not in output, output
    # one server per PostgreSQL node in each pool, checked through Patroni's REST API
    for name, address in postgres.items():
        assert text.count(f"server {name} {address}:5432 check port 8008") == 2


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


def test_haproxy_check_catches_bad_configs(tmp_path: Path) -> None:
    """The check above can fail: a misspelt keyword is an error."""
    haproxy = tool("haproxy", "haproxy")
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    text, _ = haproxy_cfg(spec, "10.20.0.5")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text.replace("http-check expect", "http-chek expect"))
    result = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
