"""Load balancers: rendered configs pass `haproxy -c`; a real HAProxy on a bridge of the
test's own (`lbtest0`) with loopback-only addresses sends traffic to healthy targets only.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import config, loadbalancers, processes
from lifeboat.waiting import wait_until

pytestmark = pytest.mark.skipif(not Path(loadbalancers.HAPROXY).exists(), reason="needs haproxy")

BRIDGE = "lbtest0"
LB_IP = "127.77.0.10"  # loopback range: traffic cannot leave this machine
TARGETS = {"healthy": "127.77.1.1", "sick": "127.77.1.2"}


def droplet(did: int, private: str | None, public: str = "198.18.16.9") -> dict:
    v4 = [{"ip_address": public, "type": "public"}]
    if private:
        v4.append({"ip_address": private, "type": "private"})
    return {"id": did, "name": f"d{did}", "networks": {"v4": v4}}


def load_balancer(**extra: object) -> dict:
    return {
        "id": "4de7ac8b-495b-4884-9a69-1050c6793cd6",
        "name": "wordpress",
        "ip": LB_IP,
        "forwarding_rules": [
            {
                "entry_protocol": "http",
                "entry_port": 80,
                "target_protocol": "http",
                "target_port": 8080,
            },
        ],
        "health_check": {
            "protocol": "http",
            "port": 8080,
            "path": "/health",
            "check_interval_seconds": 1,
            "response_timeout_seconds": 1,
            "healthy_threshold": 2,
            "unhealthy_threshold": 2,
        },
    } | extra


@pytest.fixture
def lab_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="lblb-"))  # short: the admin socket lives here
    monkeypatch.setattr(config, "STATE_DIR", base / "state")
    monkeypatch.setattr(config, "RUN_DIR", base / "state" / "run")
    monkeypatch.setattr(config, "CACHE_DIR", base / "cache")
    try:
        yield base
    finally:
        loadbalancers.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def check(text: str, path: Path) -> None:
    loadbalancers.validate(text, path / "check.cfg")


# --- rendered configs ------------------------------------------------------------------


def test_http_check_config(lab_dirs: Path) -> None:
    text = loadbalancers.render(
        load_balancer(), [droplet(1, "10.116.0.2"), droplet(2, "10.116.0.3")]
    )
    check(text, lab_dirs)
    assert "mode http" in text
    assert "option httpchk GET /health" in text
    assert "http-check expect status 200" in text
    assert "inter 1s fall 2 rise 2" in text and "timeout check 1s" in text
    assert f"bind {LB_IP}:80" in text
    assert "server d1 10.116.0.2:8080" in text and "server d2 10.116.0.3:8080" in text
    assert "198.18.16.9" not in text  # public addresses are never targets
    assert "stats socket" in text and "stats uri" not in text and "stats enable" not in text


def test_tcp_check_config(lab_dirs: Path) -> None:
    lb = load_balancer(
        forwarding_rules=[
            {
                "entry_protocol": "tcp",
                "entry_port": 5432,
                "target_protocol": "tcp",
                "target_port": 5432,
            },
        ],
        health_check={
            "protocol": "tcp",
            "port": 5432,
            "check_interval_seconds": 3,
            "response_timeout_seconds": 5,
            "healthy_threshold": 3,
            "unhealthy_threshold": 5,
        },
        enable_proxy_protocol=True,
    )
    text = loadbalancers.render(lb, [droplet(7, "10.116.0.7")])
    check(text, lab_dirs)
    assert "mode tcp" in text and "mode http" not in text
    assert "httpchk" not in text
    assert "check port 5432 inter 3s fall 5 rise 3" in text and "send-proxy" in text


def test_tag_targets_and_droplets_without_address(lab_dirs: Path) -> None:
    lb = load_balancer(
        tag="web",
        algorithm="least_connections",
        sticky_sessions={"type": "cookies", "cookie_name": "LB", "cookie_ttl_seconds": 60},
    )
    targets = [droplet(3, "10.116.0.4"), droplet(4, None), droplet(5, "10.116.0.6")]
    text = loadbalancers.render(lb, targets)
    check(text, lab_dirs)
    assert "server d3 " in text and "server d5 " in text and "server d4 " not in text
    assert "balance leastconn" in text and "cookie LB insert" in text


def test_no_targets_config(lab_dirs: Path) -> None:
    text = loadbalancers.render(load_balancer(), [])
    check(text, lab_dirs)
    assert " server d" not in text.replace("default-server", "")


def test_https_entry_is_terminated_with_a_lab_certificate(lab_dirs: Path) -> None:
    lb = load_balancer(
        forwarding_rules=[
            {
                "entry_protocol": "https",
                "entry_port": 443,
                "target_protocol": "http",
                "target_port": 80,
                "certificate_id": "ignored",
            },
            {
                "entry_protocol": "https",
                "entry_port": 8443,
                "target_protocol": "https",
                "target_port": 443,
                "tls_passthrough": True,
            },
            {
                "entry_protocol": "http",
                "entry_port": 80,
                "target_protocol": "http",
                "target_port": 80,
            },
        ],
        redirect_http_to_https=True,
    )
    text = loadbalancers.render(lb, [droplet(1, "10.116.0.2")])
    check(text, lab_dirs)
    assert f"bind {LB_IP}:443 ssl crt " in text
    assert f"bind {LB_IP}:8443\n" in text  # passthrough: TCP, no TLS of ours
    assert "redirect scheme https" in text


def test_broken_configs_are_refused(lab_dirs: Path) -> None:
    with pytest.raises(RuntimeError, match="haproxy rejects"):
        check("listen x\n    bind 127.0.0.1:1\n    server a nowhere:x\n", lab_dirs)
    udp_rule = {"entry_protocol": "udp", "entry_port": 53, "target_protocol": "udp"}
    udp = load_balancer(forwarding_rules=[udp_rule | {"target_port": 53}])
    with pytest.raises(ValueError):
        loadbalancers.render(udp, [])


# --- a real load balancer --------------------------------------------------------------


class Target(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        status = server.health if self.path == "/health" else 200  # type: ignore[attr-defined]
        if self.path != "/health":
            server.hits += 1  # type: ignore[attr-defined]
        body = server.label.encode()  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def targets() -> Iterator[dict[str, http.server.ThreadingHTTPServer]]:
    servers = {}
    try:
        for label, ip in TARGETS.items():
            srv = http.server.ThreadingHTTPServer((ip, 8080), Target)
            srv.label, srv.hits = label, 0  # type: ignore[attr-defined]
            srv.health = 200 if label == "healthy" else 500  # type: ignore[attr-defined]
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            servers[label] = srv
        yield servers
    finally:
        for srv in servers.values():
            srv.shutdown()
            srv.server_close()


@pytest.fixture
def bridge() -> Iterator[str]:
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)  # from a killed run
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        yield BRIDGE
    finally:
        subprocess.run(["ip", "link", "del", BRIDGE], check=True)


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return str(e.code)
    except (OSError, http.client.HTTPException) as e:
        return f"error: {e}"


def wait_for(predicate, timeout: float = 30) -> None:  # noqa: ANN001
    wait_until("the load balancer's targets to settle", predicate, timeout, every=0.1)


def addresses(dev: str) -> str:
    return subprocess.run(
        ["ip", "-br", "addr", "show", "dev", dev], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.lab
def test_traffic_goes_to_healthy_targets_only_and_survives_reload(
    lab_dirs: Path, bridge: str, targets: dict
) -> None:
    lb = load_balancer()
    drops = [droplet(1, TARGETS["healthy"]), droplet(2, TARGETS["sick"]), droplet(3, None)]
    loadbalancers.apply(lb, drops, bridge=bridge)
    assert LB_IP in addresses(bridge)
    url = f"http://{LB_IP}/"
    wait_for(lambda: fetch(url) == "healthy")
    assert {fetch(url) for _ in range(20)} == {"healthy"}
    assert targets["sick"].hits == 0  # not even before its first health check

    pid = loadbalancers.haproxy_pid(f"lb-{lb['id']}")
    loadbalancers.apply(lb, drops, bridge=bridge)  # unchanged: no reload
    assert loadbalancers.haproxy_pid(f"lb-{lb['id']}") == pid

    # A changed config reloads gracefully while a client keeps going.
    results: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            results[fetch(url)] += 1

    worker = threading.Thread(target=client)
    worker.start()
    try:
        time.sleep(0.3)
        lb["forwarding_rules"].append(
            {
                "entry_protocol": "tcp",
                "entry_port": 8081,
                "target_protocol": "tcp",
                "target_port": 8080,
            }
        )
        loadbalancers.apply(lb, drops, bridge=bridge)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    new_pid = loadbalancers.haproxy_pid(f"lb-{lb['id']}")
    assert new_pid and new_pid != pid
    assert set(results) == {"healthy"}, results  # no errors, and the sick one still DOWN
    assert targets["sick"].hits == 0
    wait_for(lambda: fetch(f"http://{LB_IP}:8081/") == "healthy")  # new rule: checks first

    loadbalancers.remove(lb)
    assert not processes.alive(new_pid)
    assert processes.find_pids([str(config.RUN_DIR)]) == []
    assert LB_IP not in addresses(bridge)
    loadbalancers.remove(lb)  # idempotent


@pytest.mark.lab
def test_a_target_that_recovers_gets_traffic(lab_dirs: Path, bridge: str, targets: dict) -> None:
    lb = load_balancer()
    loadbalancers.apply(lb, [droplet(1, TARGETS["healthy"]), droplet(2, TARGETS["sick"])], bridge)
    wait_for(lambda: fetch(f"http://{LB_IP}/") == "healthy")
    targets["sick"].health = 200
    wait_for(lambda: {fetch(f"http://{LB_IP}/") for _ in range(4)} == {"healthy", "sick"})


@pytest.mark.lab
def test_stop_all_recovers_from_lost_pid_files(lab_dirs: Path, bridge: str) -> None:
    lb = load_balancer()
    loadbalancers.apply(lb, [], bridge=bridge)
    pid = loadbalancers.haproxy_pid(f"lb-{lb['id']}")
    assert pid
    for f in config.RUN_DIR.glob("*.pid"):
        f.unlink()
    loadbalancers.stop_all()
    assert not processes.alive(pid)
    assert LB_IP not in addresses(bridge)
