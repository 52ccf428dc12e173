"""Droplet containers: a systemd-nspawn container per droplet, booted from the golden image.

Each droplet's disk is an overlayfs (the read-only image below, the droplet's own upper
directory above), so power-off and power-on keep the disk and destroy removes it. The
host has no systemd, so nspawn runs with --register=no --keep-unit as a detached process.
Killing nspawn alone leaves the container's init running (FIELD-NOTES): a hard power-off
kills the container's PID 1, which takes every process of its PID namespace with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from lab import cgroups
from lab.config import DROPLETS_DIR, RUN_DIR
from lab.network import netns_name, netns_pids, run
from lab.processes import alive
from lifeboat.waiting import WaitTimeout, wait_until

SIGRTMIN_POWEROFF = signal.SIGRTMIN + 4  # systemd: start poweroff.target


def droplet_dir(droplet_id: int) -> Path:
    return DROPLETS_DIR / str(droplet_id)


def root_of(droplet_id: int) -> Path:
    return droplet_dir(droplet_id) / "merged"


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mount_disk(droplet_id: int, image: Path) -> Path:
    """Mount the droplet's overlay (idempotent); returns the root directory. A droplet keeps
    the image it was created from, even after the lab's image is rebuilt."""
    base = droplet_dir(droplet_id)
    for sub in ("upper", "work", "merged"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    recorded = base / "image"
    if recorded.exists():
        image = Path(recorded.read_text())
    else:
        recorded.write_text(str(image))
    root = base / "merged"
    if not is_mounted(root):
        opts = f"lowerdir={image},upperdir={base / 'upper'},workdir={base / 'work'}"
        run("mount", "-t", "overlay", "overlay", "-o", opts, str(root))
    return root


def first_boot_setup(droplet_id: int, hostname: str, ssh_public_keys: list[str]) -> None:
    """What cloud-init does on a fresh DigitalOcean droplet: hostname, machine id, fresh
    SSH host keys and the requested keys in root's authorized_keys."""
    root = root_of(droplet_id)
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n"
    )
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    run("ssh-keygen", "-A", "-f", str(root))
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text("".join(k.strip() + "\n" for k in ssh_public_keys))
    keys.chmod(0o600)


def _pid_file(droplet_id: int) -> Path:
    return RUN_DIR / f"nspawn-{droplet_id}.pid"


def nspawn_pid(droplet_id: int) -> int | None:
    try:
        pid = int(_pid_file(droplet_id).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def init_pid(droplet_id: int) -> int | None:
    """PID 1 of the container: the child of its systemd-nspawn process."""
    pid = nspawn_pid(droplet_id)
    if pid is None:
        return None
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children = task.read_text().split()
        if children:
            return int(children[0])
    return None


def boot(droplet_id: int, name: str) -> int:
    """Start the container (no-op if it runs); returns the nspawn pid."""
    pid = nspawn_pid(droplet_id)
    if pid is not None:
        return pid
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = open(RUN_DIR / f"nspawn-{droplet_id}.log", "ab")  # noqa: SIM115 - handed to child
    proc = subprocess.Popen(
        cgroups.wrap(
            droplet_id,
            [
                "systemd-nspawn",
                "--quiet",
                "-D",
                str(root_of(droplet_id)),
                "--register=no",
                "--keep-unit",
                "-b",
                "-M",
                name,
                f"--network-namespace-path=/run/netns/{netns_name(droplet_id)}",
                # Root on a droplet manages its own firewall (the failover drill's
                # partitions are nftables rules on the primary); the namespace is its own.
                "--capability=CAP_NET_ADMIN",
                "--console=read-only",
            ],
        ),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    _pid_file(droplet_id).write_text(str(proc.pid))
    return proc.pid


def _wait_gone(droplet_id: int, timeout: float) -> bool:
    try:
        return wait_until(
            f"droplet {droplet_id}'s processes to be gone",
            lambda: nspawn_pid(droplet_id) is None and not netns_pids(droplet_id),
            timeout,
            every=0.1,
        )
    except WaitTimeout:
        return False


def kill(droplet_id: int) -> None:
    """Hard power-off: SIGKILL the container's init (its whole PID namespace dies with it),
    then anything still in its network namespace, then nspawn. Idempotent."""
    init = init_pid(droplet_id)
    if init is not None:
        _signal(init, signal.SIGKILL)
    for pid in netns_pids(droplet_id):
        _signal(pid, signal.SIGKILL)
    pid = nspawn_pid(droplet_id)
    if pid is not None and not _wait_gone(droplet_id, 5):
        _signal(pid, signal.SIGKILL)
    _wait_gone(droplet_id, 5)
    _pid_file(droplet_id).unlink(missing_ok=True)
    cgroups.remove_droplet_groups(droplet_id)


def shutdown(droplet_id: int, timeout: float = 30) -> None:
    """Clean shutdown through systemd; hard power-off if it has not finished in time."""
    init = init_pid(droplet_id)
    if init is not None:
        _signal(init, SIGRTMIN_POWEROFF)
        _wait_gone(droplet_id, timeout)
    kill(droplet_id)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def unmount_disk(droplet_id: int) -> None:
    root = root_of(droplet_id)
    if is_mounted(root):
        run("umount", "-l", str(root), check=False)


def destroy(droplet_id: int) -> None:
    kill(droplet_id)
    unmount_disk(droplet_id)
    shutil.rmtree(droplet_dir(droplet_id), ignore_errors=True)
    (RUN_DIR / f"nspawn-{droplet_id}.log").unlink(missing_ok=True)


def stale_mounts() -> list[Path]:
    """Overlay roots of lab droplets still mounted (e.g. after a killed run)."""
    with open("/proc/self/mounts") as mounts:
        points = [Path(line.split()[1]) for line in mounts]
    return [p for p in points if str(p).startswith(str(DROPLETS_DIR) + "/")]


def nspawn_processes() -> list[int]:
    """Every systemd-nspawn process running a lab droplet, pid file or not."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"systemd-nspawn")
            and str(DROPLETS_DIR).encode() in b" ".join(argv)
        ):
            found.append(int(proc.name))
    return found
