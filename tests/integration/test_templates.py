"""Every file Lifeboat places on a host, rendered and checked by the real tool:
etcd (three members started from the rendered env files), `patroni --validate-config`,
`systemd-analyze verify`, `haproxy -c`. Their rendered values, without the tools:
tests/unit/test_templates.py.

Needs on the host: etcd-server, postgresql-15 (Patroni checks bin_dir), haproxy, systemd.
All traffic stays on loopback addresses (127.x.y.z; Patroni refuses 127.0.0.1 itself as
a connect address)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from lifeboat.waiting import wait_until
from tasks.render import render
from tests.unit.test_templates import (
    EXAMPLES,
    POINT,
    haproxy_cfg,
    parse_env_file,
    patroni_yml,
)

PATRONI = Path(sys.executable).parent / "patroni"


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y {package}")
    return path


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

        def healthy(address: str) -> bool:
            dead = [log.read_text()[-2000:] for p, log in procs if p.poll() is not None]
            assert not dead, f"etcd exited:\n{dead[0]}"
            return http_ok(f"http://{address}:2379/health") is True

        for address in members.values():
            wait_until(f"etcd at {address} healthy", lambda a=address: healthy(a), 60, every=0.2)
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


# --- Patroni ----------------------------------------------------------------------------


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


def test_a_restoring_patroni_yml_passes_validate_config(
    etcd_cluster: dict[str, str], tmp_path: Path
) -> None:
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    address = next(iter(etcd_cluster.values()))
    path = tmp_path / "patroni.yml"
    path.write_text(
        patroni_yml(
            spec,
            address,
            list(etcd_cluster.values()),
            data_dir=str(tmp_path / "pg"),
            restore=POINT,
        )
    )
    result = validate_patroni(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lifeboat_restore" in path.read_text()


def test_patroni_validation_can_fail(etcd_cluster: dict[str, str], tmp_path: Path) -> None:
    """The validator really checks: 127.0.0.1 as connect address is refused."""
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    path = tmp_path / "patroni.yml"
    path.write_text(patroni_yml(spec, "127.0.0.1", list(etcd_cluster.values())))
    result = validate_patroni(path)
    assert result.returncode != 0
    assert "connect_address" in result.stdout + result.stderr


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


def test_wp_cron_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """WordPress's scheduled tasks by a timer (DISABLE_WP_CRON in wp-config.php)."""
    analyze = tool("systemd-analyze", "systemd")
    for name in ("lifeboat-wp-cron.service", "lifeboat-wp-cron.timer"):
        (tmp_path / name).write_text(
            render(f"wordpress/{name}.j2", docroot="/var/www/lifeboat/wordpress")
        )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "lifeboat-wp-cron.timer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # /usr/bin/php is on every web droplet; this host may have php-cli or not.
    allowed = "Command /usr/bin/php is not executable"
    assert result.returncode == 0 or all(allowed in line for line in lines), lines
    assert [line for line in lines if allowed not in line] == [], lines
