"""DigitalOcean load balancers as one real HAProxy process per load balancer on the host.

Also the HAProxy process plumbing that lab/spaces.py reuses for its TLS terminator: each
HAProxy is named, and keeps `haproxy-<name>.{cfg,pid,sock,state,log}` in RUN_DIR. The
config path is in the process's argv, which is how stale processes are found again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
from pathlib import Path

from lab import ca, config
from lab.processes import find_pids, kill, read_pid
from lab.render import render as render_template
from lifeboat.waiting import wait_until

HAPROXY = "/usr/sbin/haproxy"
LB_PREFIX = "lb-"
SRV_ADMF_CMAINT = 0x04  # srv_admin_state flag: `disabled` in the config
DEFAULT_HEALTH_CHECK = {  # DigitalOcean's defaults
    "protocol": "http",
    "port": 80,
    "path": "/",
    "check_interval_seconds": 10,
    "response_timeout_seconds": 5,
    "healthy_threshold": 3,
    "unhealthy_threshold": 5,
}


def paths(name: str) -> dict[str, Path]:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"bad haproxy name {name!r}")
    base = config.RUN_DIR / f"haproxy-{name}"
    return {ext: Path(f"{base}.{ext}") for ext in ("cfg", "pid", "sock", "state", "log", "json")}


def haproxy_pid(name: str) -> int | None:
    p = paths(name)
    return read_pid(p["pid"], str(p["cfg"]))


def haproxy_command(name: str, command: str) -> str:
    """One command on the HAProxy's admin socket (unix, mode 600, under RUN_DIR)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(paths(name)["sock"]))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _servers(state: str) -> dict[tuple[str, str], tuple[int, int]]:
    """{(backend, server): (operational state, admin flags)} from `show servers state`."""
    servers = {}
    for line in state.splitlines():
        fields = line.split()
        if len(fields) > 6 and not line.startswith("#"):
            servers[(fields[1], fields[3])] = (int(fields[5]), int(fields[6]))
    return servers


def validate(config_text: str, path: Path) -> None:
    """`haproxy -c` on `config_text` written to `path`; raises with HAProxy's complaint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text)
    res = subprocess.run(
        [HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise RuntimeError(f"haproxy rejects {path}: {(res.stderr or res.stdout).strip()}")


HOLD = " disabled"  # appended to the server lines of new targets, see run_haproxy


def _hold_new(config_text: str, known: set[tuple[str, str]]) -> str:
    """Mark `disabled` the servers the running HAProxy does not know yet."""
    out, section = [], ""
    for line in config_text.splitlines(keepends=True):
        words = line.split()
        if words and words[0] in ("listen", "backend"):
            section = words[1]
        elif words[:1] == ["server"] and (section, words[1]) not in known:
            line = line.rstrip("\n") + HOLD + "\n"
        out.append(line)
    return "".join(out)


def _unheld(config_text: str) -> str:
    return re.sub(rf"^(\s*server .*){HOLD}$", r"\1", config_text, flags=re.MULTILINE)


def run_haproxy(name: str, config_text: str, hold_new_servers: bool = False) -> bool:
    """Start the named HAProxy, or reload it gracefully (`-sf`) if its config changed.

    Returns True if a process was started. With `hold_new_servers` (load balancers), a
    target gets traffic only once it has passed `rise` checks, as on DigitalOcean: targets
    the old process knew keep their health through the server-state-file, new ones start
    `disabled` and are released as DOWN. (HAProxy would start them UP; and a `disabled`
    server is restored UP from the state file whatever its health, so only new ones are.)
    """
    p = paths(name)
    p["cfg"].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old_pid = haproxy_pid(name)
    if old_pid and p["cfg"].exists() and _unheld(p["cfg"].read_text()) == config_text:
        return False
    known: set[tuple[str, str]] = set()
    if old_pid and hold_new_servers:
        with contextlib.suppress(OSError):
            state = haproxy_command(name, "show servers state")
            p["state"].write_text(state)
            known = set(_servers(state))
    else:
        p["state"].unlink(missing_ok=True)
    if hold_new_servers:
        config_text = _hold_new(config_text, known)
    new = p["cfg"].with_name(p["cfg"].name + ".new")
    validate(config_text, new)
    previous = p["cfg"].read_text() if p["cfg"].exists() else None
    os.replace(new, p["cfg"])
    cmd = [HAPROXY, "-D", "-f", str(p["cfg"]), "-p", str(p["pid"])]
    if old_pid:
        cmd += ["-sf", str(old_pid)]
    with open(p["log"], "ab") as log:
        # -D: the parent returns once the daemon runs (or failed to bind), so errors show up
        # here; the daemon itself is detached from us.
        res = subprocess.run(
            cmd,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            timeout=30,
        )
    if res.returncode != 0:
        if previous is not None:
            p["cfg"].write_text(previous)
        raise RuntimeError(f"haproxy {name} did not start (exit {res.returncode}); see {p['log']}")
    if hold_new_servers:
        _release_servers(name)
    return True


def _release_servers(name: str) -> None:
    """Take held (maintenance) servers out as DOWN: they must pass `rise` checks first."""
    state = wait_until(
        f"load balancer {name}'s stats socket",
        lambda: haproxy_command(name, "show servers state"),
        timeout=5,
        every=0.05,
        retry_on=(OSError,),
    )
    commands = []
    for (backend, server), (_, admin) in sorted(_servers(state).items()):
        if admin & SRV_ADMF_CMAINT:
            # one CLI line: no request is handled between the two commands
            commands.append(f"enable server {backend}/{server}")
            commands.append(f"set server {backend}/{server} health down")
    if commands:
        haproxy_command(name, "; ".join(commands))


def stop_haproxy(name: str) -> None:
    """Stop the named HAProxy (and any leftover process using its config). Idempotent."""
    p = paths(name)
    pids = set(find_pids([str(p["cfg"])]))
    if pid := haproxy_pid(name):
        pids.add(pid)
    kill(sorted(pids))
    for ext in ("pid", "sock", "state"):
        p[ext].unlink(missing_ok=True)


# --- load balancers ----------------------------------------------------------------------


def _lb_name(lb: dict) -> str:
    return f"{LB_PREFIX}{lb['id']}"


def _private_ip(droplet: dict) -> str | None:
    for net in droplet.get("networks", {}).get("v4", []):
        if net.get("type") == "private" and net.get("ip_address"):
            return net["ip_address"]
    return None


def _rule(rule: dict, lb: dict, servers: list[dict]) -> dict:
    entry, target = rule["entry_protocol"], rule["target_protocol"]
    if entry == "udp" or target == "udp":
        raise ValueError("the lab's load balancers do not forward UDP")
    tls_entry = entry in ("https", "http2", "http3") and not rule.get("tls_passthrough")
    tls_cert = None
    if tls_entry:
        # DigitalOcean's certificate_id has no meaning here: the lab CA signs for the LB IP.
        cert, _ = ca.issue_server_cert(_lb_name(lb), [lb["ip"]], [])
        tls_cert = str(cert.with_suffix(".pem"))
    mode = "http" if entry == "http" or tls_entry else "tcp"
    hc_port = (lb.get("health_check") or {}).get("port", DEFAULT_HEALTH_CHECK["port"])
    return {
        # Ports and protocols in the name: HAProxy restores a server's saved port and TLS
        # from the state file, so a changed rule must start with fresh servers.
        "name": f"{entry}{rule['entry_port']}-{target}{rule['target_port']}-check{hc_port}",
        "entry_port": int(rule["entry_port"]),
        "target_port": int(rule["target_port"]),
        "mode": mode,
        "tls_cert": tls_cert,
        "alpn": "h2,http/1.1" if entry in ("http2", "http3") else "http/1.1",
        "target_tls": mode == "http" and target in ("https", "http2"),
        "target_alpn": "h2" if target == "http2" else None,
        "servers": servers,
    }


def render(lb: dict, targets: list[dict]) -> str:
    """The HAProxy config of one load balancer (a DigitalOcean load balancer object)."""
    name = _lb_name(lb)
    ipaddress.ip_address(lb["ip"])  # refuse to render a config around garbage
    hc = DEFAULT_HEALTH_CHECK | (lb.get("health_check") or {})
    servers = [
        {"name": f"d{d['id']}", "address": ip}
        for d in sorted(targets, key=lambda d: d["id"])
        if (ip := _private_ip(d))  # a droplet without an address cannot be a target
    ]
    sticky = lb.get("sticky_sessions") or {}
    p = paths(name)
    return render_template(
        "loadbalancer.cfg.j2",
        lb_id=lb["id"],
        name=lb.get("name", ""),
        ip=lb["ip"],
        socket=p["sock"],
        state_file=p["state"],
        idle_timeout=int(lb.get("http_idle_timeout_seconds") or 60),
        balance="leastconn" if lb.get("algorithm") == "least_connections" else "roundrobin",
        backend_keepalive=bool(lb.get("enable_backend_keepalive")),
        redirect_to_https=bool(lb.get("redirect_http_to_https")),
        proxy_protocol=bool(lb.get("enable_proxy_protocol")),
        sticky=(
            {
                "name": sticky.get("cookie_name") or "DO-LB",
                "ttl": int(sticky.get("cookie_ttl_seconds") or 300),
            }
            if sticky.get("type") == "cookies"
            else None
        ),
        check={
            "protocol": hc["protocol"],
            "port": int(hc["port"]),
            "path": hc.get("path") or "/",
            "interval": int(hc["check_interval_seconds"]),
            "timeout": int(hc["response_timeout_seconds"]),
            "rise": int(hc["healthy_threshold"]),
            "fall": int(hc["unhealthy_threshold"]),
        },
        rules=[_rule(r, lb, servers) for r in lb.get("forwarding_rules", [])],
    )


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def _has_address(ip: str, bridge: str) -> bool:
    res = _ip("-j", "addr", "show", "dev", bridge)
    if res.returncode != 0:
        raise RuntimeError(f"no interface {bridge}: {res.stderr.strip()}")
    return any(a.get("local") == ip for link in json.loads(res.stdout) for a in link["addr_info"])


def apply(lb: dict, targets: list[dict], bridge: str = config.PUBLIC_BRIDGE) -> None:
    """Start or reload the HAProxy of `lb`, forwarding to the private IPs of `targets`."""
    name = _lb_name(lb)
    text = render(lb, targets)
    p = paths(name)
    p["json"].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    p["json"].write_text(json.dumps({"ip": lb["ip"], "bridge": bridge}))
    if not _has_address(lb["ip"], bridge):
        res = _ip("addr", "add", f"{lb['ip']}/32", "dev", bridge)
        if res.returncode != 0:
            raise RuntimeError(f"cannot add {lb['ip']} to {bridge}: {res.stderr.strip()}")
    run_haproxy(name, text, hold_new_servers=True)


def _release(name: str) -> None:
    p = paths(name)
    stop_haproxy(name)
    with contextlib.suppress(OSError, ValueError, KeyError):
        where = json.loads(p["json"].read_text())
        _ip("addr", "del", f"{where['ip']}/32", "dev", where["bridge"])  # gone already: fine
    for ext in ("cfg", "json", "log"):
        p[ext].unlink(missing_ok=True)


def remove(lb: dict) -> None:
    """Stop the load balancer's HAProxy and release its address. Idempotent."""
    _release(_lb_name(lb))


def stop_all() -> None:
    """Stop every load balancer of this lab, including ones left by a killed run."""
    names = {
        f.name.removeprefix("haproxy-").rsplit(".", 1)[0]
        for ext in ("cfg", "pid", "json")
        for f in config.RUN_DIR.glob(f"haproxy-{LB_PREFIX}*.{ext}")
    }
    for name in sorted(names):
        _release(name)
    # processes whose files are gone (a half-removed RUN_DIR)
    kill(find_pids([str(config.RUN_DIR / f"haproxy-{LB_PREFIX}")]))
