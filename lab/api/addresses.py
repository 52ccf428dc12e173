"""Address allocation from the lab's pools and VPC ranges."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from lab.api.errors import unprocessable
from lab.config import (
    DEFAULT_VPC_RANGES,
    GATEWAY,
    LOAD_BALANCER_POOL,
    PUBLIC_DROPLET_POOL,
    PUBLIC_NET,
)

PUBLIC_NETMASK = str(PUBLIC_NET.netmask)
PUBLIC_GATEWAY = str(GATEWAY)
# Ranges custom VPCs may not take: every region's default range (even one not made yet)
# and the public network.
RESERVED_RANGES = [ipaddress.ip_network(r) for r in DEFAULT_VPC_RANGES.values()] + [PUBLIC_NET]


def _first_free(candidates: Iterable[ipaddress.IPv4Address], used: set[str], what: str) -> str:
    for address in candidates:
        if str(address) not in used:
            return str(address)
    raise unprocessable(f"No free address left in the {what}.")


def public_droplet_address(used: set[str]) -> str:
    return _first_free(PUBLIC_DROPLET_POOL.hosts(), used, f"public pool {PUBLIC_DROPLET_POOL}")


def load_balancer_address(used: set[str]) -> str:
    return _first_free(LOAD_BALANCER_POOL.hosts(), used, f"load balancer pool {LOAD_BALANCER_POOL}")


def private_address(ip_range: str, used: set[str]) -> str:
    """Skips the network and broadcast addresses and the first host (the lab host's)."""
    hosts = ipaddress.ip_network(ip_range).hosts()
    next(hosts, None)
    return _first_free(hosts, used, f"VPC range {ip_range}")  # type: ignore[arg-type]


def private_netmask(ip_range: str) -> str:
    return str(ipaddress.ip_network(ip_range).netmask)


def parse_vpc_range(ip_range: str) -> ipaddress.IPv4Network:
    """A custom VPC range as DO accepts it: RFC 1918, between /16 and /28."""
    try:
        net = ipaddress.ip_network(ip_range)
    except ValueError:
        raise unprocessable(f"ip_range {ip_range!r} is not a valid CIDR network.") from None
    if not isinstance(net, ipaddress.IPv4Network) or not any(
        net.subnet_of(ipaddress.ip_network(p))
        for p in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    ):
        raise unprocessable(f"ip_range {ip_range} must be a private (RFC 1918) IPv4 range.")
    if not 16 <= net.prefixlen <= 28:
        raise unprocessable(f"ip_range {ip_range} may not be smaller than /28 nor larger than /16.")
    return net


def free_vpc_range(taken: list[ipaddress.IPv4Network]) -> str:
    """A /20 in 10.0.0.0/8 that overlaps neither `taken` nor the reserved ranges."""
    blocked = taken + RESERVED_RANGES
    for candidate in ipaddress.ip_network("10.0.0.0/8").subnets(new_prefix=20):
        if not any(candidate.overlaps(b) for b in blocked):
            return str(candidate)
    raise unprocessable("No free VPC range left.")
