"""Spaces: moto's S3 server on loopback behind an HAProxy TLS terminator signed by the lab CA.

moto keeps every object in its own memory, so stopping moto loses the data; an outage
only stops the terminator. Files: RUN_DIR/moto.{pid,log}, RUN_DIR/haproxy-spaces.*, and
STATE_DIR/spaces/ (credentials 0600, endpoint, moto's temporary files).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from lab import ca, config, loadbalancers, processes
from lab.render import render
from lifeboat.waiting import WaitTimeout, wait_until

REGION = "nyc3"
DNS_NAME = "spaces.lab"
HAPROXY_NAME = "spaces"


def _dir() -> Path:
    return config.STATE_DIR / "spaces"


def _moto_pid_file() -> Path:
    return config.RUN_DIR / "moto.pid"


def _moto_marker() -> str:
    # In moto's argv (as a harmless `python -X` option) so stale processes can be found
    # and told apart from another lab's.
    return f"{config.LAB_PROCESS_TAG}={config.STATE_DIR}"


def _credentials() -> dict[str, str]:
    """Generated once per lab; moto accepts any keys, but clients must be given some."""
    path = _dir() / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    alphabet = string.ascii_uppercase + string.digits
    creds = {
        "access_key": "".join(secrets.choice(alphabet) for _ in range(20)),
        "secret_key": secrets.token_urlsafe(32),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _moto_pid() -> int | None:
    return processes.read_pid(_moto_pid_file(), _moto_marker())


def _start_moto() -> None:
    if _moto_pid():
        return
    if _port_open("127.0.0.1", config.MOTO_PORT):
        raise RuntimeError(f"127.0.0.1:{config.MOTO_PORT} is taken by something else")
    tmp = _dir() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true",  # path-style only, like our clients
        "TMPDIR": str(tmp),  # moto spools big objects to disk: keep that in the lab's dir
    }
    cmd = [sys.executable, "-X", _moto_marker(), "-m", "moto.server"]
    cmd += ["-H", "127.0.0.1", "-p", str(config.MOTO_PORT)]
    log = open(config.RUN_DIR / "moto.log", "ab")  # noqa: SIM115 (the child keeps it)
    with log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    _moto_pid_file().write_text(f"{proc.pid}\n")

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("moto exited")
        return _port_open("127.0.0.1", config.MOTO_PORT)

    try:
        wait_until("moto to listen", listening, timeout=30, every=0.1)
    except (WaitTimeout, RuntimeError) as e:
        processes.kill([proc.pid])
        raise RuntimeError(f"moto did not start; see {config.RUN_DIR / 'moto.log'}") from e


def _terminator_config(ip: str, port: int, pem: Path) -> str:
    return render(
        "spaces.cfg.j2",
        socket=loadbalancers.paths(HAPROXY_NAME)["sock"],
        ip=ip,
        port=port,
        pem=pem,
        moto_port=config.MOTO_PORT,
    )


def start(bind_ip: str = str(config.GATEWAY)) -> dict[str, Any]:
    """Start moto and the terminator (whichever is not running) and describe the endpoint."""
    config.RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    _dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    port = config.SPACES_PORT
    cert, _ = ca.issue_server_cert("spaces", [bind_ip], [DNS_NAME])
    _start_moto()
    loadbalancers.run_haproxy(
        HAPROXY_NAME, _terminator_config(bind_ip, port, cert.with_suffix(".pem"))
    )
    host = f"[{bind_ip}]" if ":" in bind_ip else bind_ip
    info = {
        "endpoint": f"https://{host}" + ("" if port == 443 else f":{port}"),
        "region": REGION,
        **_credentials(),
        "ca_cert": str(ca.ensure_ca()),
    }
    # Remembered (without the keys) for restore() and is_up().
    (_dir() / "endpoint.json").write_text(json.dumps({"ip": bind_ip, "port": port}))
    return info


def outage() -> None:
    """Spaces stops answering (connections refused); moto and its data stay."""
    loadbalancers.stop_haproxy(HAPROXY_NAME)


def restore() -> None:
    """End an outage: the terminator comes back in front of the same moto."""
    if not _moto_pid():
        raise RuntimeError("moto is not running: start() Spaces instead (its data is gone)")
    cfg = loadbalancers.paths(HAPROXY_NAME)["cfg"]
    loadbalancers.run_haproxy(HAPROXY_NAME, cfg.read_text())


def is_up() -> bool:
    """True if both processes run and the HTTPS endpoint accepts connections."""
    try:
        where = json.loads((_dir() / "endpoint.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        _moto_pid() is not None
        and loadbalancers.haproxy_pid(HAPROXY_NAME) is not None
        and _port_open(where["ip"], int(where["port"]))
    )


def stop() -> None:
    """Stop the terminator and moto (Spaces' data is lost with moto). Idempotent."""
    loadbalancers.stop_haproxy(HAPROXY_NAME)
    pids = set(processes.find_pids([_moto_marker()]))
    if pid := _moto_pid():
        pids.add(pid)
    processes.kill(sorted(pids))
    _moto_pid_file().unlink(missing_ok=True)


def stop_stale() -> None:
    """Kill whatever Spaces processes an earlier, killed run left: by pid file and argv."""
    stop()
    # a moto on our port started some other way (e.g. by hand with `moto_server`)
    port = str(config.MOTO_PORT)
    for pid in processes.find_pids(["moto"]):
        args = processes.cmdline(pid)
        if any(a == "-p" and b == port for a, b in zip(args, args[1:], strict=False)):
            processes.kill([pid])


def boto3_client(info: dict[str, Any], **config_overrides: Any) -> Any:
    """A boto3 S3 client for the lab's endpoint, keys and CA, set up as a Spaces client is
    (path-style, checksums only when required, short timeouts, few retries);
    `config_overrides` go to botocore's Config."""
    settings = {
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"mode": "standard", "max_attempts": 3},
    } | config_overrides
    return boto3.client(
        "s3",
        endpoint_url=info["endpoint"],
        region_name=info["region"],
        aws_access_key_id=info["access_key"],
        aws_secret_access_key=info["secret_key"],
        verify=str(info["ca_cert"]),
        config=Config(**settings),
    )
