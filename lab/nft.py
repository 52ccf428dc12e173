"""Cloud firewalls and faults, enforced by nftables on the host.

Bridged IPv4 between droplets passes the host's `forward` hook (br_netfilter), traffic
from the host to a droplet its `output` hook, and from a droplet to the host (API stand-in,
Spaces) its `input` hook. Two `inet` tables hook all three:
- the firewall table: DigitalOcean firewall semantics (stateful; a droplet with no firewall
  accepts everything; a droplet with firewalls accepts only what one of them allows);
- the faults table: every packet from or to an isolated droplet (partitioned or powered
  off) is dropped, so it vanishes without a TCP reset, while ARP still answers; a partial
  partition drops only the packets between the droplet and a chosen set of peers.
Each table is replaced whole in one nft transaction, so no packet sees half a rule set.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from lab.config import NFT_FAULTS_TABLE, NFT_FIREWALL_TABLE, STATE_DIR
from lab.network import run

FAULTS_FILE = STATE_DIR / "faults.json"
HOOKS = ("input", "forward", "output")


def replace_table(name: str, body: list[str]) -> None:
    script = [f"table inet {name}", f"delete table inet {name}", f"table inet {name} {{"]
    script += body + ["}"]
    run("nft", "-f", "-", input="\n".join(script) + "\n")


def delete_tables() -> None:
    for name in (NFT_FIREWALL_TABLE, NFT_FAULTS_TABLE):
        run("nft", "delete", "table", "inet", name, check=False)


def lab_tables() -> list[str]:
    out = run("nft", "list", "tables", check=False).stdout
    names = (NFT_FIREWALL_TABLE, NFT_FAULTS_TABLE)
    return [
        line.split()[-1] for line in out.splitlines() if line.split()[-1:] in ([n] for n in names)
    ]


def _base_chains(rules_for_hook: dict[str, list[str]]) -> list[str]:
    lines = []
    for hook in HOOKS:
        lines.append(f"  chain {hook} {{")
        lines.append(f"    type filter hook {hook} priority 0; policy accept;")
        lines += [f"    {rule}" for rule in rules_for_hook.get(hook, [])]
        lines.append("  }")
    return lines


def _set(addrs: Iterable[str]) -> str:
    return "{ " + ", ".join(sorted(addrs)) + " }"


# --- faults --------------------------------------------------------------------------------


def _load_faults() -> dict[str, dict]:
    try:
        return json.loads(FAULTS_FILE.read_text())
    except FileNotFoundError:
        return {}


def _store_faults(faults: dict[str, dict]) -> None:
    FAULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = FAULTS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults, indent=1, sort_keys=True))
    tmp.replace(FAULTS_FILE)
    rules = fault_rules(faults)
    replace_table(NFT_FAULTS_TABLE, _base_chains({h: rules for h in HOOKS} if rules else {}))


def fault_rules(faults: dict[str, dict]) -> list[str]:
    """Each entry: {"addrs": the droplet's addresses, "reasons": {reason: peers}}, where
    peers None isolates the droplet from everyone, and a list of addresses only from those
    (both directions; everyone else still reaches it)."""
    isolated = {
        a
        for f in faults.values()
        for peers in f["reasons"].values()
        if peers is None
        for a in f["addrs"]
    }
    rules = []
    if isolated:
        rules += [f"ip saddr {_set(isolated)} drop", f"ip daddr {_set(isolated)} drop"]
    for f in faults.values():
        for peers in f["reasons"].values():
            if peers:
                mine, theirs = _set(f["addrs"]), _set(peers)
                rules += [
                    f"ip saddr {mine} ip daddr {theirs} drop",
                    f"ip saddr {theirs} ip daddr {mine} drop",
                ]
    return rules


def isolate(droplet_id: int, addrs: list[str], reason: str, peers: list[str] | None = None) -> None:
    """Drop the droplet's packets for `reason` ("partition" or "off") until released: all of
    them, or with `peers` only those to and from these addresses (a partial partition)."""
    if peers is not None and not peers:
        raise ValueError("a partial partition needs at least one peer address")
    faults = _load_faults()
    entry = faults.setdefault(str(droplet_id), {"addrs": addrs, "reasons": {}})
    entry["addrs"] = addrs
    entry["reasons"][reason] = sorted(peers) if peers is not None else None
    _store_faults(faults)


def release(droplet_id: int, reason: str) -> None:
    faults = _load_faults()
    entry = faults.get(str(droplet_id))
    if entry:
        entry["reasons"].pop(reason, None)
    _store_faults({k: v for k, v in faults.items() if v["reasons"]})


def isolation_reasons(droplet_id: int) -> list[str]:
    return sorted(_load_faults().get(str(droplet_id), {}).get("reasons", {}))


def forget(droplet_id: int) -> None:
    faults = _load_faults()
    if faults.pop(str(droplet_id), None) is not None:
        _store_faults(faults)


# --- firewalls -----------------------------------------------------------------------------


def droplet_addrs(droplet: dict) -> list[str]:
    return [n["ip_address"] for n in droplet.get("networks", {}).get("v4", [])]


def _resolve(endpoints: dict, droplets: list[dict], lb_addrs: dict[str, list[str]]) -> set[str]:
    """Addresses named by a rule's `sources`/`destinations`: addresses and CIDRs, droplet
    ids, tags, load balancer ids (whose HAProxy reaches droplets from the host's VPC
    gateway addresses)."""
    out = {str(ipaddress.ip_network(a, strict=False)) for a in endpoints.get("addresses", [])}
    ids = set(endpoints.get("droplet_ids", []))
    tags = set(endpoints.get("tags", []))
    for d in droplets:
        if d["id"] in ids or tags & set(d.get("tags", [])):
            out.update(droplet_addrs(d))
    for uid in endpoints.get("load_balancer_uids", []):
        out.update(lb_addrs.get(uid, []))
    # nft keeps IPv4 only in an `ip` set; DigitalOcean's "::/0" has no lab counterpart.
    return {a for a in out if ipaddress.ip_network(a).version == 4}


def _rule(protocol: str, ports: str, direction: str, addrs: set[str]) -> str | None:
    if not addrs:
        return None
    match = f"ip {direction} {_set(addrs)}"
    if protocol == "icmp":
        return f"{match} meta l4proto icmp return"
    port = "" if str(ports) in ("", "0", "all") else f" {protocol} dport {ports}"
    return f"{match} meta l4proto {protocol}{port} return"


def render_firewalls(
    droplets: list[dict], firewalls: list[dict], lb_addrs: dict[str, list[str]]
) -> list[str]:
    """The firewall table's body: one inbound and one outbound chain per protected droplet."""
    lines: list[str] = []
    dispatch: dict[str, list[str]] = {h: [] for h in HOOKS}
    for d in droplets:
        mine = [
            f
            for f in firewalls
            if d["id"] in f.get("droplet_ids", [])
            or set(f.get("tags", [])) & set(d.get("tags", []))
        ]
        addrs = droplet_addrs(d)
        if not mine or not addrs:
            continue
        for kind, key, side, peer in (
            ("in", "inbound_rules", "daddr", "sources"),
            ("out", "outbound_rules", "saddr", "destinations"),
        ):
            chain = f"fw_{kind}_{d['id']}"
            lines.append(f"  chain {chain} {{")
            # `return`, not `accept`: an accept would skip the peer's own chain in this hook.
            lines.append("    ct state established,related return")
            for fw in mine:
                for r in fw.get(key, []):
                    resolved = _resolve(r.get(peer, {}), droplets, lb_addrs)
                    direction = "saddr" if kind == "in" else "daddr"
                    rule = _rule(r["protocol"], r.get("ports", ""), direction, resolved)
                    if rule:
                        lines.append(f"    {rule}")
            lines.append("    drop")
            lines.append("  }")
            # input: droplet -> host, outbound rules only; output: host -> droplet, inbound only.
            hooks = ("forward", "output") if kind == "in" else ("forward", "input")
            for hook in hooks:
                dispatch[hook].append(f"ip {side} {_set(addrs)} jump {chain}")
    return lines + _base_chains(dispatch)


def apply_firewalls(
    droplets: list[dict], firewalls: list[dict], lb_addrs: dict[str, list[str]]
) -> None:
    replace_table(NFT_FIREWALL_TABLE, render_firewalls(droplets, firewalls, lb_addrs))
