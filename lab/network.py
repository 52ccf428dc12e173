"""Bridges, network namespaces and veths of the local cloud.

Each droplet lives in its own network namespace with `eth0` on the public bridge and `eth1`
on its VPC's bridge, as on DigitalOcean. Bridged IPv4 goes through the host's `inet` hooks
(br_netfilter), which is where lab.nft enforces cloud firewalls and faults.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
from pathlib import Path

from lab.config import (
    GATEWAY,
    NETNS_PREFIX,
    PUBLIC_BRIDGE,
    PUBLIC_NET,
    VPC_BRIDGE_PREFIX,
)


def run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a host command with a timeout; failures raise with the command's own message."""
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed: {proc.stderr.strip()}")
    return proc


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


_bridges = threading.Lock()  # the API stand-in builds droplets of one VPC in parallel


def ensure_bridge(name: str, address: str) -> None:
    """A bridge holding `address` (CIDR form) on the host. Idempotent."""
    with _bridges:
        if not link_exists(name):
            run("ip", "link", "add", name, "type", "bridge")
        if address not in run("ip", "-o", "addr", "show", "dev", name).stdout:
            run("ip", "addr", "add", address, "dev", name)
        run("ip", "link", "set", name, "up")
    # Bridged IPv4 must traverse the inet hooks for firewalls and faults to apply.
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")


def ensure_public_bridge() -> None:
    ensure_bridge(PUBLIC_BRIDGE, f"{GATEWAY}/{PUBLIC_NET.prefixlen}")


def vpc_bridge_name(vpc_id: str) -> str:
    """Interface names are at most 15 bytes: a prefix and the start of the VPC id."""
    return VPC_BRIDGE_PREFIX + vpc_id.replace("-", "")[:10]


def ensure_vpc_bridge(vpc: dict) -> str:
    net = ipaddress.ip_network(vpc["ip_range"])
    name = vpc_bridge_name(vpc["id"])
    ensure_bridge(name, f"{next(net.hosts())}/{net.prefixlen}")
    return name


def delete_vpc_bridge(vpc_id: str) -> None:
    name = vpc_bridge_name(vpc_id)
    with _bridges:
        if link_exists(name):
            run("ip", "link", "del", name)


def netns_name(droplet_id: int) -> str:
    return f"{NETNS_PREFIX}{droplet_id}"


def create_droplet_network(
    droplet_id: int, public: str, private: str, private_prefix: int, vpc_bridge: str
) -> str:
    """Namespace with eth0 (public) and eth1 (private) plugged into the bridges. Idempotent:
    an existing namespace is rebuilt, so a half-made one from a killed run is repaired."""
    ns = netns_name(droplet_id)
    delete_droplet_network(droplet_id)
    run("ip", "netns", "add", ns)
    for ifname, bridge, addr, prefix in (
        ("eth0", PUBLIC_BRIDGE, public, PUBLIC_NET.prefixlen),
        ("eth1", vpc_bridge, private, private_prefix),
    ):
        host_end = f"lv{droplet_id}{ifname[-1]}"
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ifname, "netns", ns)
        run("ip", "link", "set", host_end, "master", bridge, "up")
        run("ip", "-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", ifname)
        run("ip", "-n", ns, "link", "set", ifname, "up")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "route", "add", "default", "via", str(GATEWAY))
    return ns


def delete_droplet_network(droplet_id: int) -> None:
    """Removing the namespace removes its veths (and their host ends) with it."""
    ns = netns_name(droplet_id)
    if Path("/run/netns", ns).exists():
        run("ip", "netns", "delete", ns, check=False)
    for end in ("0", "1"):
        if link_exists(f"lv{droplet_id}{end}"):
            run("ip", "link", "delete", f"lv{droplet_id}{end}", check=False)


def netns_pids(droplet_id: int) -> list[int]:
    out = run("ip", "netns", "pids", netns_name(droplet_id), check=False).stdout
    return [int(p) for p in out.split()]


def lab_netns() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX)]


def lab_links() -> list[str]:
    """Every bridge and veth host end the lab may have left behind."""
    return sorted(
        p.name
        for p in Path("/sys/class/net").iterdir()
        if p.name == PUBLIC_BRIDGE
        or p.name.startswith(VPC_BRIDGE_PREFIX)
        or (p.name.startswith("lv") and p.name[2:].isdigit())
    )


def delete_all() -> None:
    """Remove every namespace, veth and bridge of the lab."""
    for ns in lab_netns():
        run("ip", "netns", "delete", ns, check=False)
    for link in lab_links():
        run("ip", "link", "delete", link, check=False)


def vpc_gateway_addrs() -> list[str]:
    """The host's addresses on VPC bridges: where load balancers reach droplets from."""
    out = run("ip", "-o", "-4", "addr", "show", check=False).stdout
    return [
        line.split()[3].split("/")[0]
        for line in out.splitlines()
        if line.split()[1].startswith(VPC_BRIDGE_PREFIX)
    ]


def sshd_answers(ip: str, timeout: float = 1.0) -> bool:
    """sshd's banner on port 22 (a TCP accept alone can come before sshd is ready)."""
    try:
        with socket.create_connection((ip, 22), timeout) as s:
            s.settimeout(timeout)
            return s.recv(4) == b"SSH-"
    except OSError:
        return False
