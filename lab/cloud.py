"""What the DigitalOcean API stand-in asks of the machine.

The API layer (lab/api) keeps DigitalOcean's resources and their semantics; this module
is the one place that turns them into containers, namespaces, nftables rules and HAProxy
processes. Records are plain dicts shaped like DigitalOcean's API objects.
"""

from __future__ import annotations

from typing import Protocol


class Cloud(Protocol):
    def create_droplet(self, droplet: dict, ssh_public_keys: list[str], vpc: dict) -> None:
        """Build the droplet's disk and network and boot it. `droplet["networks"]` already
        holds its public and private addresses (allocated by the API layer). Returns once
        the container is started; `droplet_ready` says when sshd answers."""

    def droplet_ready(self, droplet: dict) -> bool:
        """True once sshd answers on the droplet's public address."""

    def power_off(self, droplet: dict) -> None:
        """Hard off: every process dies at once; its addresses stop answering (no resets)."""

    def shutdown(self, droplet: dict) -> None:
        """Clean shutdown through systemd; falls back to power_off after a timeout."""

    def power_on(self, droplet: dict) -> None:
        """Boot again from the same disk."""

    def destroy_droplet(self, droplet: dict) -> None:
        """Remove container, overlay, namespace and veths. Idempotent."""

    def apply_firewalls(self, droplets: list[dict], firewalls: list[dict]) -> None:
        """Enforce the given firewalls (DigitalOcean firewall objects, with droplet_ids and
        tags resolved against `droplets`) in place of whatever was enforced before."""

    def apply_load_balancer(self, lb: dict, targets: list[dict]) -> None:
        """Start or reload the HAProxy of one load balancer (`lb["ip"]` allocated by the
        API layer) forwarding to the private addresses of `targets` (droplet dicts)."""

    def remove_load_balancer(self, lb: dict) -> None:
        """Stop that load balancer's HAProxy and release its address. Idempotent."""

    def remove_vpc(self, vpc: dict) -> None:
        """Remove the VPC's bridge (a deleted VPC's range may be reused: a stale bridge
        holding the same gateway address would take its routes). Idempotent."""
