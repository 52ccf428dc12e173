"""The golden image every lab droplet boots from.

Built with mmdebstrap from the package manifest the provision runbook installs on real
droplets (tasks/packages.txt), plus what a container needs to boot, and the lab CA. It is
cached under a hash of the manifest, this recipe and the CA, and rebuilt only when one of
them changes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab import ca
from lab.config import CACHE_DIR

MANIFEST = Path(__file__).resolve().parent.parent / "tasks" / "packages.txt"
# Container plumbing, not part of what a real droplet needs installed by us.
BOOT_PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd"]
# For bench/web.py only: the same WordPress on MariaDB, the setup a WordPress user would pick
# instead. Masked in the image, so no droplet runs it unless the benchmark unmasks it.
BENCH_PACKAGES = ["mariadb-server"]
BENCH_MASKED = ["mariadb.service"]
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
IMAGES_DIR = CACHE_DIR / "images"
CA_NAME = "lifeboat-lab-ca.crt"


def manifest_packages() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in MANIFEST.read_text().splitlines())
    return [line for line in lines if line]


def image_key() -> str:
    digest = hashlib.sha256()
    digest.update(MANIFEST.read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(ca.ca_fingerprint().encode())
    return digest.hexdigest()[:16]


def image_path(images_dir: Path = IMAGES_DIR) -> Path:
    return images_dir / image_key() / "rootfs"


def _say(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def ensure_image(images_dir: Path = IMAGES_DIR) -> Path:
    """Return the cached image, building it first if the manifest or recipe changed."""
    target = image_path(images_dir)
    if (target.parent / "complete").exists():
        return target
    started = time.monotonic()
    _say(
        f"building golden image {target.parent.name} (Debian 12, {len(manifest_packages())} "
        "packages from tasks/packages.txt); this takes a minute or two"
    )
    build_dir = target.parent.with_name(target.parent.name + ".build")
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    rootfs = build_dir / "rootfs"
    mirror = [str(HOST_SOURCES)] if HOST_SOURCES.exists() else []
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(BOOT_PACKAGES + manifest_packages() + BENCH_PACKAGES),
        "bookworm",
        str(rootfs),
        *mirror,
    ]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("I: "):  # mmdebstrap's own progress lines
                _say(f"{time.monotonic() - started:5.0f}s {line[3:].strip()}")
        if p.wait() != 0:
            raise RuntimeError(f"mmdebstrap failed with exit code {p.returncode}")
    _customize(rootfs)
    shutil.rmtree(target.parent, ignore_errors=True)
    build_dir.rename(target.parent)
    (target.parent / "complete").write_text(f"{time.monotonic() - started:.1f}\n")
    _prune_old(images_dir, keep=target.parent.name)
    _say(f"image ready in {time.monotonic() - started:.0f}s: {target}")
    return target


def _customize(rootfs: Path) -> None:
    """What every droplet image needs before first boot."""
    # Trust the lab CA, as droplets trust the public CAs that sign Spaces' certificate.
    shutil.copy(ca.ensure_ca(), rootfs / "usr/local/share/ca-certificates" / CA_NAME)
    subprocess.run(
        ["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True
    )
    # Per-droplet identity is created at first boot (lab.containers.first_boot_setup).
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    # Keep root's systemd user manager running: stopping it after the last session fails in
    # these containers (its cgroup cannot be killed) and stalls new logins for ~100 s.
    (rootfs / "var/lib/systemd/linger").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/lib/systemd/linger/root").touch()
    # No console login in a container; nothing to wait for on the network.
    for unit in (
        "console-getty.service",
        "getty@tty1.service",
        "systemd-networkd-wait-online.service",
        *BENCH_MASKED,
    ):
        link = rootfs / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def _prune_old(images_dir: Path, keep: str) -> None:
    for old in images_dir.iterdir():
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
