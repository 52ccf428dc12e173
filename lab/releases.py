"""Release archives served over HTTPS from the lab gateway, as wordpress.org and GitHub
serve them in production: the WordPress runbook's download, SHA-256 check, unpack and
symlink switch run for real in the local cloud, which reaches no web site.

- PG4WP: the vendored archive in ../shared/vendor/pg4wp/ (GPL-2.0), as it is.
- WordPress: built from the golden image's Debian `wordpress` package and its
  twentytwentythree theme package, in the layout of wordpress.org's tarball (one
  `wordpress/` folder; symlinks into other Debian packages replaced by the files they point
  at; no Debian wp-config.php loader, no .htaccess). The archive is byte-for-byte
  reproducible (sorted entries, one fixed mtime, root owner, gzip without a timestamp), so
  the examples can pin its SHA-256: it changes only when Debian's package does.

Served by lab/release_server.py on https://GATEWAY:RELEASES_PORT/releases/<file>, with a
certificate signed by the lab CA (which every droplet trusts, as for Spaces).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
from pathlib import Path

from lab import ca, config, processes

VENDOR = Path(__file__).resolve().parents[2] / "shared" / "vendor"
PG4WP_ARCHIVE = VENDOR / "pg4wp" / "postgresql-for-wordpress-3.4.tar.gz"
PG4WP_VERSION = "3.4"
WORDPRESS_SRC = "usr/share/wordpress"  # inside the image
THEMES = ("twentytwentythree",)
# Debian's own glue, absent from wordpress.org's tarball.
SKIP = {".htaccess", "wp-config.php"}
# Debian links it to the image's trust store, which holds this machine's lab CA: the
# archive would differ per machine. Built from Mozilla's list alone, as wordpress.org's is.
CA_BUNDLE = "wp-includes/certificates/ca-bundle.crt"
MOZILLA_CAS = "usr/share/ca-certificates/mozilla"
PID_FILE = config.RUN_DIR / "releases.pid"
LOG_FILE = config.RUN_DIR / "releases.log"


def base_url() -> str:
    return f"https://{config.GATEWAY}:{config.RELEASES_PORT}/releases"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wordpress_version(rootfs: Path) -> str:
    text = (rootfs / WORDPRESS_SRC / "wp-includes/version.php").read_text()
    found = re.search(r"\$wp_version\s*=\s*'([^']+)'", text)
    if not found:
        raise RuntimeError(f"no $wp_version in the image's {WORDPRESS_SRC}/wp-includes/version.php")
    return found.group(1)


def _inside(rootfs: Path, path: Path) -> Path:
    """`path` (in the image) with its symlinks followed as the droplet would follow them:
    absolute targets are inside the image, not on this host."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = rootfs / target.relative_to("/") if target.is_absolute() else path.parent / target
    raise RuntimeError(f"symlink loop at {path}")


def _entries(rootfs: Path) -> list[tuple[str, Path]]:
    """(name in the archive, real file or folder in the image), sorted."""
    src = rootfs / WORDPRESS_SRC
    for theme in THEMES:
        if not (src / "wp-content/themes" / theme / "style.css").exists():
            raise RuntimeError(
                f"theme {theme} is not in the image: add wordpress-theme-{theme} to "
                "tasks/packages.txt"
            )
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        here = Path(dirpath)
        rel = here.relative_to(src)
        for name in dirnames + filenames:
            if rel == Path(".") and name in SKIP:
                continue
            real = _inside(rootfs, here / name)
            if real.exists():
                out.append((f"wordpress/{rel / name}".replace("/./", "/"), real))
    out.append(("wordpress", src))
    return sorted(out)


def build_wordpress(rootfs: Path, out_dir: Path) -> Path:
    """The reproducible archive (built once per image)."""
    out = out_dir / f"wordpress-{wordpress_version(rootfs)}.tar.gz"
    if out.exists():
        return out
    # One mtime for every entry: the package's own version.php, not the image's build time.
    mtime = int((rootfs / WORDPRESS_SRC / "wp-includes/version.php").stat().st_mtime)
    tmp = out.with_suffix(".part")
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name, real in _entries(rootfs):
            if name == f"wordpress/{CA_BUNDLE}":
                _add_bytes(tar, name, _mozilla_bundle(rootfs), mtime)
                continue
            info = tar.gettarinfo(str(real), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with real.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp.rename(out)
    return out


def _mozilla_bundle(rootfs: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((rootfs / MOZILLA_CAS).glob("*.crt")))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def build(rootfs: Path) -> dict[str, dict[str, str]]:
    """Every release the lab serves: {name: {version, url, sha256}}."""
    out_dir = rootfs.parent / "releases"
    out_dir.mkdir(exist_ok=True)
    if not PG4WP_ARCHIVE.exists():
        raise RuntimeError(f"{PG4WP_ARCHIVE} is missing: the lab serves PG4WP from there")
    pg4wp = out_dir / PG4WP_ARCHIVE.name
    if not pg4wp.exists():
        shutil.copyfile(PG4WP_ARCHIVE, pg4wp)
    wordpress = build_wordpress(rootfs, out_dir)
    return {
        "wordpress": {
            "version": wordpress_version(rootfs),
            "url": f"{base_url()}/{wordpress.name}",
            "sha256": sha256(wordpress),
        },
        "pg4wp": {
            "version": PG4WP_VERSION,
            "url": f"{base_url()}/{pg4wp.name}",
            "sha256": sha256(pg4wp),
        },
    }


def _pid() -> int | None:
    return processes.read_pid(PID_FILE, "lab.release_server")


def is_up() -> bool:
    return _pid() is not None


def start(rootfs: Path) -> dict[str, dict[str, str]]:
    """Build (once) and serve the releases; a running server is left as it is."""
    served = build(rootfs)
    if _pid():
        return served
    cert, key = ca.issue_server_cert("releases", [str(config.GATEWAY)], [])
    processes.start_server(
        "release server",
        "lab.release_server",
        ["--bind", str(config.GATEWAY), "--port", str(config.RELEASES_PORT)]
        + ["--dir", str(rootfs.parent / "releases"), "--cert", str(cert), "--key", str(key)],
        PID_FILE,
        LOG_FILE,
        config.RELEASES_PORT,
    )
    return served
