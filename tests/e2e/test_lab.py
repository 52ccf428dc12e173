"""The local cloud end to end, through pydo and SSH only, as the runbooks will use it."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pydo
import pytest

from tasks.hosts import run
from tests.e2e.conftest import private_ip, public_ip, ssh, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.lab]
TAG = "e2e-lab"


def tcp_state(host: str, port: int, timeout: float = 2.0) -> str:
    """ "open", "refused" or "silent" (packets vanish), as a client sees it."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "silent"
    except OSError:
        return "unreachable"


def remote_tcp(conn, host: str, port: int) -> bool:
    """Can the droplet behind `conn` open a TCP connection to host:port (2 s limit)?"""
    cmd = f"timeout 2 bash -c '</dev/tcp/{host}/{port}'"
    return run(conn, cmd, warn=True).ok


def test_three_droplets_firewall_load_balancer_power_off(do: pydo.Client, lab: dict, ssh_key_id):
    do.droplets.destroy_by_tag(tag_name=TAG)
    body = {
        "names": ["lab-a", "lab-b", "lab-c"],
        "region": "nyc3",
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "ssh_keys": [ssh_key_id],
        "tags": [TAG],
    }
    created = do.droplets.create(body=body)["droplets"]
    assert [d["status"] for d in created] == ["new"] * 3

    def all_active():
        ds = do.droplets.list(tag_name=TAG)["droplets"]
        return ds if len(ds) == 3 and all(d["status"] == "active" for d in ds) else None

    a, b, c = sorted(wait_for("three active droplets", all_active, 60), key=lambda d: d["name"])
    conns = {d["name"]: ssh(lab, public_ip(d)) for d in (a, b, c)}

    # Each boots a full systemd, reached over real SSH on its public address.
    for name, conn in conns.items():
        state = run(conn, "systemctl is-system-running --wait", warn=True).stdout
        if state.strip() != "running":  # say which unit failed and why (seen once, under load)
            state += run(
                conn,
                "systemctl --failed --no-legend --plain; for u in $(systemctl --failed "
                "--no-legend --plain | awk '{print $1}'); do journalctl -b -u $u -n 15 "
                "--no-pager; done",
                warn=True,
            ).stdout
        assert state.strip() == "running", (name, state)
        assert run(conn, "hostname").stdout.strip() == name

    # Private (VPC) addresses reach each other.
    assert remote_tcp(conns["lab-a"], private_ip(b), 22)
    assert remote_tcp(conns["lab-b"], private_ip(c), 22)
    assert remote_tcp(conns["lab-a"], private_ip(c), 80)  # Debian's nginx answers on c

    # A firewall on c allowing only SSH blocks its port 80, from droplets and from outside.
    fw = do.firewalls.create(
        body={
            "name": "e2e-ssh-only",
            "droplet_ids": [c["id"]],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["0.0.0.0/0"]}}
            ],
            "outbound_rules": [
                {"protocol": "tcp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}}
            ],
        }
    )["firewall"]
    # Applied in the background, as on DigitalOcean (status "waiting", then "succeeded"):
    # wait for the effect (a CI round once asserted it before the rules were in).
    wait_for(
        "c's port 80 closed by the firewall",
        lambda: not remote_tcp(conns["lab-a"], private_ip(c), 80),
        30,
        every=1,
    )
    assert tcp_state(public_ip(c), 80) == "silent"
    assert remote_tcp(conns["lab-a"], private_ip(c), 22)
    assert run(conns["lab-c"], "true").ok  # established SSH kept working
    do.firewalls.delete(firewall_id=fw["id"])
    wait_for(
        "c's port 80 open again", lambda: remote_tcp(conns["lab-a"], private_ip(c), 80), 30, every=1
    )

    # A load balancer with an HTTP health check sends traffic only to the healthy droplet.
    for d in (a, b):
        run(conns[d["name"]], f"echo {d['name']} > /var/www/html/index.html")
    run(conns["lab-a"], "echo ok > /var/www/html/healthz")  # b has none: 404
    lb = do.load_balancers.create(
        body={
            "name": "e2e-lb",
            "region": "nyc3",
            "forwarding_rules": [
                {
                    "entry_protocol": "http",
                    "entry_port": 80,
                    "target_protocol": "http",
                    "target_port": 80,
                }
            ],
            "health_check": {
                "protocol": "http",
                "port": 80,
                "path": "/healthz",
                "check_interval_seconds": 3,
                "response_timeout_seconds": 3,
                "healthy_threshold": 2,
                "unhealthy_threshold": 2,
            },
            "droplet_ids": [a["id"], b["id"]],
        }
    )["load_balancer"]
    lb = wait_for(
        "load balancer active",
        lambda: (
            (x := do.load_balancers.get(lb_id=lb["id"])["load_balancer"])["status"] == "active"
            and x
        ),
        30,
    )

    def served_by() -> list[str]:
        out = []
        for _ in range(10):
            try:
                with urllib.request.urlopen(f"http://{lb['ip']}/", timeout=3) as resp:
                    out.append(resp.read().decode().strip())
            except urllib.error.HTTPError as exc:  # 503 until a target passes its checks
                out.append(f"HTTP {exc.code}")
        return out

    # Health checks settle within a few intervals; then every request lands on lab-a.
    wait_for("b marked down", lambda: set(served_by()) == {"lab-a"}, 20, every=1)
    assert set(served_by()) == {"lab-a"}
    do.load_balancers.delete(lb_id=lb["id"])

    # Hard power-off: status off, SSH fails, packets vanish (no reset).
    action = do.droplet_actions.post(droplet_id=b["id"], body={"type": "power_off"})["action"]
    wait_for(
        "power_off completed",
        lambda: do.actions.get(action_id=action["id"])["action"]["status"] == "completed",
        30,
    )
    assert do.droplets.get(droplet_id=b["id"])["droplet"]["status"] == "off"
    assert tcp_state(public_ip(b), 22) == "silent"
    assert not remote_tcp(conns["lab-a"], private_ip(b), 22)
    with pytest.raises(Exception):  # noqa: B017 - any SSH failure will do
        run(ssh(lab, public_ip(b), timeout=3), "true")

    # Destroy by tag removes them all.
    for conn in conns.values():
        conn.close()
    do.droplets.destroy_by_tag(tag_name=TAG)
    wait_for("droplets gone", lambda: not do.droplets.list(tag_name=TAG)["droplets"], 30)
    # As on DigitalOcean, a destroyed droplet leaves the API first; its machine follows.
    wait_for("a's address to stop answering", lambda: tcp_state(public_ip(a), 22, 1) != "open", 30)


def test_faults_partition_heal_and_s3_outage(do: pydo.Client, lab: dict, ssh_key_id):
    from lab import faults, spaces

    body = {
        "name": "lab-fault",
        "region": "nyc3",
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "ssh_keys": [ssh_key_id],
        "tags": [TAG + "-fault"],
    }
    d = do.droplets.create(body=body)["droplet"]
    d = wait_for(
        "droplet active",
        lambda: (x := do.droplets.get(droplet_id=d["id"])["droplet"])["status"] == "active" and x,
    )
    assert tcp_state(public_ip(d), 22) == "open"
    faults.partition("lab-fault")
    assert tcp_state(public_ip(d), 22) == "silent"  # dropped, not reset: like a lost link
    faults.heal("lab-fault")
    assert tcp_state(public_ip(d), 22) == "open"
    # The droplet reaches Spaces (HTTPS, lab CA in its trust store) until the outage.
    conn = ssh(lab, public_ip(d))
    probe = f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 5 {lab['spaces']['endpoint']}/"
    assert run(conn, probe).stdout in ("200", "403")
    s3 = spaces.boto3_client(lab["spaces"])
    s3.create_bucket(Bucket="fault-test")
    s3.put_object(Bucket="fault-test", Key="k", Body=b"kept")
    faults.s3_outage()
    try:
        assert not run(conn, probe, warn=True).ok
        with pytest.raises(Exception):  # noqa: B017 - any client error will do
            s3.get_object(Bucket="fault-test", Key="k")
    finally:
        faults.s3_restore()
    assert s3.get_object(Bucket="fault-test", Key="k")["Body"].read() == b"kept"
    s3.delete_object(Bucket="fault-test", Key="k")
    s3.delete_bucket(Bucket="fault-test")
    conn.close()
    do.droplets.destroy(droplet_id=d["id"])


def test_partial_partition_cuts_only_the_chosen_peers(do: pydo.Client, lab: dict, ssh_key_id):
    """A cut off from B only: B and A cannot talk, C still reaches both, and so does the
    host (the load balancers' and clients' side), until the heal."""
    from lab import faults

    names = ["lab-pp-a", "lab-pp-b", "lab-pp-c"]
    body = {
        "names": names,
        "region": "nyc3",
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "ssh_keys": [ssh_key_id],
        "tags": [TAG + "-pp"],
    }
    created = do.droplets.create(body=body)["droplets"]
    ids = [d["id"] for d in created]

    def all_active() -> list[dict] | None:
        now = [do.droplets.get(droplet_id=i)["droplet"] for i in ids]
        return now if all(d["status"] == "active" for d in now) else None

    try:
        a, b, c = wait_for("three droplets active", all_active, timeout=120)
        conn_b, conn_c = ssh(lab, public_ip(b)), ssh(lab, public_ip(c))
        faults.partition("lab-pp-a", ["lab-pp-b"])
        try:
            assert not remote_tcp(conn_b, private_ip(a), 22), "B still reaches A"
            assert remote_tcp(conn_c, private_ip(a), 22), "C no longer reaches A"
            assert remote_tcp(conn_b, private_ip(c), 22), "B no longer reaches C"
            assert tcp_state(public_ip(a), 22) == "open", "the host no longer reaches A"
            conn_a = ssh(lab, public_ip(a))
            assert not remote_tcp(conn_a, private_ip(b), 22), "A still reaches B"
            assert remote_tcp(conn_a, private_ip(c), 22), "A no longer reaches C"
            conn_a.close()
        finally:
            faults.heal("lab-pp-a")
        assert remote_tcp(conn_b, private_ip(a), 22), "B does not reach A after the heal"
        conn_b.close()
        conn_c.close()
    finally:
        for i in ids:
            do.droplets.destroy(droplet_id=i)
