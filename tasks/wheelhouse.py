"""Patroni for the database droplets: a pinned PyPI release, never Debian's 3.0.2.

The orchestrator builds a wheelhouse once from tasks/patroni-requirements.txt, where Patroni
and every dependency are pinned by version and SHA-256 (pip refuses any archive whose hash
differs: a changed release or a compromised index stops the build; it builds the two
sdist-only dependencies, python-etcd and ydiff, from their checked archives), and ships it
over SSH, so droplets need no internet and install only what was checked. Debian 12
droplets run CPython 3.11 on x86_64: the wheelhouse is built for exactly that.
"""

from __future__ import annotations

import hashlib
import io
import platform
import shlex
import subprocess
import tarfile
from pathlib import Path

from fabric import Connection
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.hosts import run

PATRONI_REQUIREMENT = "patroni[etcd3,psycopg3]==4.1.5"
REQUIREMENTS = Path(__file__).resolve().parent / "patroni-requirements.txt"  # with hashes
TARGET = ("3.11", "x86_64")  # Debian 12's python3 on DigitalOcean droplets
CACHE = Path.home() / ".cache" / "lifeboat" / "wheelhouse"
VENV = "/opt/patroni"
REMOTE_WHEELS = "/var/cache/lifeboat/wheels"


def wheelhouse_dir() -> Path:
    """Per pinned set: a changed requirements file builds a new wheelhouse."""
    pinned = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return CACHE / hashlib.sha256(f"{pinned} {TARGET}".encode()).hexdigest()[:12]


def build_wheelhouse() -> Path:
    """Wheels for PATRONI_REQUIREMENT and every dependency, built once and cached."""
    target = wheelhouse_dir()
    if (target / "complete").exists():
        return target
    if platform.machine() != TARGET[1]:
        raise RuntimeError(
            f"the Patroni wheelhouse is built for {TARGET[1]} droplets; this orchestrator is "
            f"{platform.machine()}: build it on an x86_64 machine"
        )
    target.mkdir(parents=True, exist_ok=True)
    # pip under a CPython 3.11 (uv finds or brings one) picks wheels the droplets can load.
    cmd = [
        "uv",
        "tool",
        "run",
        "--python",
        TARGET[0],
        "--from",
        "pip",
        "pip",
        "wheel",
        "--quiet",
        "--require-hashes",
        "--no-deps",  # every dependency is in the file, pinned: nothing resolved on the side
        "--wheel-dir",
        str(target),
        "--requirement",
        str(REQUIREMENTS),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the Patroni wheelhouse failed: {proc.stderr[-2000:]}")
    (target / "complete").write_text(PATRONI_REQUIREMENT + "\n")
    return target


def _tarball(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for wheel in sorted(directory.glob("*.whl")):
            tar.add(wheel, arcname=wheel.name)
    return buf.getvalue()


def installed_version(conn: Connection) -> str | None:
    res = run(conn, f"{VENV}/bin/patroni --version", warn=True)
    return res.stdout.split()[-1] if res.ok and res.stdout.strip() else None


def install_patroni(conn: Connection, wheels: Path) -> bool:
    """Install the pinned Patroni into its own virtualenv; returns whether it changed."""
    wanted = PATRONI_REQUIREMENT.split("==")[1]
    if installed_version(conn) == wanted:
        return False
    conn.put(io.BytesIO(_tarball(wheels)), "/tmp/lifeboat-wheels.tar.gz")
    run(
        conn,
        f"mkdir -p {REMOTE_WHEELS} && tar -xzf /tmp/lifeboat-wheels.tar.gz -C {REMOTE_WHEELS}"
        f" && rm /tmp/lifeboat-wheels.tar.gz && python3 -m venv {VENV}"
        f" && {VENV}/bin/pip install --quiet --no-index --find-links {REMOTE_WHEELS}"
        f" {shlex.quote(PATRONI_REQUIREMENT)}",
        timeout=600,
    )
    if installed_version(conn) != wanted:
        raise RuntimeError(f"Patroni {wanted} did not install on {conn.host}")
    return True


@task(name="wheelhouse", cache_policy=NO_CACHE, retries=1)
def wheelhouse() -> Path:
    return build_wheelhouse()
