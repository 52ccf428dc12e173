"""The Cloud the API stand-in drives: droplets become containers, firewalls and faults
nftables rules, load balancers HAProxy processes on the host."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from lab import containers, loadbalancers, network, nft
from lab.config import LAB_FILE


def _image() -> Path:
    """The image `lab up` built or found: new droplets boot from it."""
    return Path(json.loads(LAB_FILE.read_text())["image"])


def _address(droplet: dict, kind: str) -> dict:
    return next(n for n in droplet["networks"]["v4"] if n["type"] == kind)


class MachineCloud:
    def create_droplet(self, droplet: dict, ssh_public_keys: list[str], vpc: dict) -> None:
        public, private = _address(droplet, "public"), _address(droplet, "private")
        prefix = ipaddress.ip_network(vpc["ip_range"]).prefixlen
        network.ensure_public_bridge()
        bridge = network.ensure_vpc_bridge(vpc)
        network.create_droplet_network(
            droplet["id"], public["ip_address"], private["ip_address"], prefix, bridge
        )
        containers.mount_disk(droplet["id"], _image())
        containers.first_boot_setup(droplet["id"], droplet["name"], ssh_public_keys)
        containers.boot(droplet["id"], droplet["name"])

    def droplet_ready(self, droplet: dict) -> bool:
        if nft.isolation_reasons(droplet["id"]):
            return False
        return network.sshd_answers(_address(droplet, "public")["ip_address"])

    def power_off(self, droplet: dict) -> None:
        # Drop its packets first, so peers see silence, never a reset from a dying stack.
        nft.isolate(droplet["id"], nft.droplet_addrs(droplet), "off")
        containers.kill(droplet["id"])

    def shutdown(self, droplet: dict) -> None:
        containers.shutdown(droplet["id"])
        nft.isolate(droplet["id"], nft.droplet_addrs(droplet), "off")

    def power_on(self, droplet: dict) -> None:
        nft.release(droplet["id"], "off")
        containers.mount_disk(droplet["id"], _image())
        containers.boot(droplet["id"], droplet["name"])

    def destroy_droplet(self, droplet: dict) -> None:
        containers.destroy(droplet["id"])
        network.delete_droplet_network(droplet["id"])
        nft.forget(droplet["id"])

    def apply_firewalls(self, droplets: list[dict], firewalls: list[dict]) -> None:
        gateways = network.vpc_gateway_addrs()
        lb_ids = {
            uid
            for fw in firewalls
            for r in fw.get("inbound_rules", [])
            for uid in r.get("sources", {}).get("load_balancer_uids", [])
        }
        nft.apply_firewalls(droplets, firewalls, {uid: gateways for uid in lb_ids})

    def apply_load_balancer(self, lb: dict, targets: list[dict]) -> None:
        network.ensure_public_bridge()
        loadbalancers.apply(lb, targets)

    def remove_load_balancer(self, lb: dict) -> None:
        loadbalancers.remove(lb)

    def remove_vpc(self, vpc: dict) -> None:
        network.delete_vpc_bridge(vpc["id"])
