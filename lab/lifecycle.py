"""`lab up`, `lab down` and `lab status`: the local cloud as a whole."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lab import (
    ca,
    cgroups,
    containers,
    image,
    loadbalancers,
    network,
    nft,
    notifications,
    processes,
    releases,
    spaces,
)
from lab.config import API_PORT, GATEWAY, LAB_FILE, MOTO_PORT, RUN_DIR, STATE_DIR, STATE_FILE
from lifeboat.waiting import WaitTimeout, wait_until

API_URL = f"http://{GATEWAY}:{API_PORT}"
TOKEN_FILE = STATE_DIR / "api-token"
SSH_KEY = STATE_DIR / "ssh" / "id_ed25519"
API_PID = RUN_DIR / "api.pid"


def _say(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _api_answers(token: str) -> bool:
    req = urllib.request.Request(
        f"{API_URL}/v2/account", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def is_up() -> bool:
    return (
        LAB_FILE.exists()
        and TOKEN_FILE.exists()
        and _api_answers(TOKEN_FILE.read_text())
        and spaces.is_up()
        and releases.is_up()
    )


def up() -> dict:
    """Bring the lab up; a healthy lab is left as it is, a half-up one is cleared first.
    The notification receiver is not part of a healthy lab (is_up): a lab brought up
    before it existed stays usable, and gets one here."""
    if is_up():
        _say("already up")
        notifications.start()
        return info()
    if leftovers():
        _say("clearing what an earlier run left: " + "; ".join(leftovers()))
        down(quiet=True)
    started = time.monotonic()
    ca.ensure_ca()
    rootfs = image.ensure_image()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    _raise_host_limits()
    network.ensure_public_bridge()
    nft.apply_firewalls([], [], {})
    token = secrets.token_hex(32)
    _write_secret(TOKEN_FILE, token)
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "lifeboat-lab",
                "-f",
                str(SSH_KEY),
            ],
            check=True,
        )
    _start_api()
    try:
        wait_until("the API stand-in", lambda: _api_answers(token), timeout=30, every=0.2)
    except WaitTimeout as e:
        raise RuntimeError(f"the API stand-in did not answer; see {RUN_DIR / 'api.log'}") from e
    s3 = spaces.start()
    served = releases.start(rootfs)
    notifications.start()
    lab = {
        "api_url": API_URL,
        "api_token_file": str(TOKEN_FILE),
        "image": str(rootfs),
        "ssh_private_key": str(SSH_KEY),
        "ssh_public_key": SSH_KEY.with_suffix(".pub").read_text().strip(),
        "spaces": {k: str(v) for k, v in s3.items()},
        "releases": served,
    }
    LAB_FILE.write_text(json.dumps(lab, indent=2))
    os.chmod(LAB_FILE, 0o600)
    _say(f"up in {time.monotonic() - started:.1f}s: API {API_URL}, Spaces {s3['endpoint']}")
    return info()


# Every container's systemd, journald, udev and logind hold inotify instances, all counted
# against root's limit of 128 by default: about twenty droplets exhaust it and the next
# one's boot hangs. Raised, never lowered (other software on the host may rely on more).
HOST_LIMITS = {
    "/proc/sys/fs/inotify/max_user_instances": 8192,
    "/proc/sys/fs/inotify/max_user_watches": 524288,
}


def _raise_host_limits() -> None:
    for path, wanted in HOST_LIMITS.items():
        if int(Path(path).read_text()) < wanted:
            Path(path).write_text(f"{wanted}\n")


def _start_api() -> None:
    log = open(RUN_DIR / "api.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.api",
            "--host",
            str(GATEWAY),
            "--port",
            str(API_PORT),
            "--token-file",
            str(TOKEN_FILE),
            "--state-file",
            str(STATE_FILE),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    log.close()
    API_PID.write_text(str(proc.pid))


def _lab_server_pids(only: bytes = b"") -> list[int]:
    """Every lab server process (API stand-in, HAProxys, moto, release server, notification
    receiver), found by its argv, since a pid file may be gone after a crash. Containers
    are found by lab.containers."""
    marker = str(STATE_DIR).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or argv[0].endswith(b"systemd-nspawn"):
            continue
        line = b" ".join(argv)
        if only not in line:
            continue
        if marker in line or (b"moto" in line and str(MOTO_PORT).encode() in argv):
            pids.append(int(proc.name))
    return pids


def down(quiet: bool = False) -> list[str]:
    """Remove everything the lab made; returns what is left (empty when clean)."""
    for pid in _lab_server_pids(only=b"lab.api"):  # first, so it boots nothing new
        _kill(pid)
    for d in sorted(p for p in (STATE_DIR / "droplets").glob("*") if p.name.isdigit()):
        containers.kill(int(d.name))
    for pid in containers.nspawn_processes():  # containers without a pid file
        for child in Path(f"/proc/{pid}/task").glob("*/children"):
            for c in child.read_text().split():
                _kill(int(c))
        _kill(pid)
    for ns in network.lab_netns():
        for pid in network.run("ip", "netns", "pids", ns, check=False).stdout.split():
            _kill(int(pid))
    loadbalancers.stop_all()
    spaces.stop()
    # The release server and the notification receiver (their --pid-file is in their
    # argv), and whatever a killed run left without a pid file.
    for pid in _lab_server_pids():
        _kill(pid)
    for mount in containers.stale_mounts():
        network.run("umount", "-l", str(mount), check=False)
    cgroups.remove_all()
    network.delete_all()
    nft.delete_tables()
    subprocess.run(["rm", "-rf", str(STATE_DIR)], check=False)
    left = leftovers()
    if not quiet:
        _say("down: nothing left" if not left else "down, but left: " + "; ".join(left))
    return left


def _kill(pid: int) -> None:
    """A lab leftover ends at once: SIGKILL, no grace period."""
    processes.kill([pid], gentle=False)


def leftovers() -> list[str]:
    """Everything of the lab still present on the machine, one line per kind."""
    found = {
        "network namespaces": network.lab_netns(),
        "links": network.lab_links(),
        "overlay mounts": [str(m) for m in containers.stale_mounts()],
        "nspawn processes": containers.nspawn_processes(),
        "lab server processes": _lab_server_pids(),
        "nftables tables": nft.lab_tables(),
        "droplet cgroups": cgroups.leftover(),
    }
    return [f"{kind}: {', '.join(map(str, items))}" for kind, items in found.items() if items]


def info() -> dict:
    """What a script needs to use the lab (the `lab status --json` document)."""
    if not LAB_FILE.exists():
        return {"up": False}
    lab = json.loads(LAB_FILE.read_text())
    token = TOKEN_FILE.read_text()
    lab.update(
        up=is_up(),
        api_token=token,
        droplets=_droplets(token),
        notifications={
            "url": notifications.url(),
            "up": notifications.is_up(),
            "received": len(notifications.received()),
        },
    )
    return lab


def _droplets(token: str) -> list[dict]:
    # Imported here: `lab down` must work without pydo loaded.
    from lab.client import client, paged

    out = []
    for d in paged(client(token, API_URL).droplets.list, "droplets"):
        addrs = {n["type"]: n["ip_address"] for n in d["networks"]["v4"]}
        out.append(
            {
                "id": d["id"],
                "name": d["name"],
                "tags": d["tags"],
                "status": d["status"],
                "public_ipv4": addrs.get("public"),
                "private_ipv4": addrs.get("private"),
            }
        )
    return out
