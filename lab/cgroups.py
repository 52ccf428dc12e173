"""A cgroup of its own for every droplet container.

With no systemd on the host, nspawn (--register=no --keep-unit) runs the container in the
cgroup nspawn itself was started in, under a "payload" child. Droplets started from one
cgroup therefore shared one tree: one container's systemd removed or waited on another's
unit cgroups (seen as a unit failing with status=219/CGROUP at boot, and as stops that hang
until the unit's timeout because the cgroup never empties). So each container is started
inside `lifeboat-lab/droplet-<id>` of every hierarchy systemd uses.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "lifeboat-lab"


def _hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's cgroup in it) for each hierarchy systemd tracks units in:
    the unified one alone on a cgroup2 host, else name=systemd plus unified if mounted."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path.lstrip("/")
    if (ROOT / "cgroup.controllers").exists():
        return [(ROOT, own.get("", ""))]
    found = [(ROOT / "systemd", own.get("name=systemd", ""))]
    if (ROOT / "unified/cgroup.controllers").exists():
        found.append((ROOT / "unified", own.get("", "")))
    return found


def _lab_groups() -> list[Path]:
    return [mount / own / GROUP for mount, own in _hierarchies()]


def droplet_groups(droplet_id: int) -> list[Path]:
    return [group / f"droplet-{droplet_id}" for group in _lab_groups()]


def wrap(droplet_id: int, argv: list[str]) -> list[str]:
    """`argv` run from a shell that first moves itself into the droplet's cgroups, then
    execs it (so the pid is nspawn's; a preexec_fn is unsafe in the threaded API server)."""
    moves = []
    for group in droplet_groups(droplet_id):
        group.mkdir(parents=True, exist_ok=True)
        moves.append(f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))}")
    return ["sh", "-ec", "; ".join([*moves, 'exec "$@"']), "sh", *argv]


def _remove_tree(top: Path) -> None:
    """rmdir from the leaves up; a cgroup that still holds a process stays."""
    if not top.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def remove_droplet_groups(droplet_id: int) -> None:
    for group in droplet_groups(droplet_id):
        _remove_tree(group)


def remove_all() -> None:
    for group in _lab_groups():
        _remove_tree(group)


def leftover() -> list[str]:
    """Droplet cgroups still present (each is removed when its container stops)."""
    return sorted(str(d) for g in _lab_groups() if g.is_dir() for d in g.iterdir() if d.is_dir())
