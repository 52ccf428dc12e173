"""Lifeboat's object layout in Spaces (S3): the one place that spells where objects live.

  <prefix>/<system id>/wal/<WAL file name>.zst                (wal_agent.py)
  <prefix>/<system id>/backups/<backup id>/base.tar.zst       (basebackup.py)
  <prefix>/<system id>/backups/<backup id>/manifest.json      (the orchestrator, last)
  <prefix>/media/<path under wp-content/uploads>              (media_agent.py, web droplets)

<prefix> is the stack's name (wal.conf's `prefix`; the droplet programs strip slashes
around it and leave it out when empty). Under it, one folder per PostgreSQL system
identifier: a re-bootstrapped or restored cluster reuses segment names, so clusters that
share a prefix never collide. A backup is in the catalog only when its manifest is stored
and every object the manifest lists is stored at the size it records (tasks/catalog.py).
WordPress media belong to the site, not to a cluster: they sit in one `media` folder beside
the system ids (which are digits, so never `media`), and the WAL and backup parsers never
read a media key as theirs, whatever a file under uploads/ is called.

Who imports it:
- the droplet programs (wal_agent.py, basebackup.py on database droplets, media_agent.py
  on web droplets), which run with Debian's python3 from /usr/local/lib/lifeboat/: this
  file is placed there beside them and they import it as the sibling module
  `spaces_layout`;
- the orchestrator (tasks/backup.py, tasks/catalog.py and anything that names keys), as
  `tasks.layout`, a loader that executes this very file.

Why it lives here, in the droplet programs' folder, and not in a package the droplets
would get a copy of: every way the programs run finds it beside them with no extra step
(on a droplet, in the unit tests and benchmarks that run them from templates/wal/), and
the orchestrator loads the same file by path, as it renders every other file it places.
So there is one file, the one tested on both sides. Hence the rules for this module: pure
standard library, importable by Debian 12's python3.11, no I/O, nothing but names.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BACKUPS",
    "BASE",
    "MANIFEST",
    "WAL",
    "WAL_SUFFIX",
    "MEDIA",
    "BackupObject",
    "backup_area",
    "backup_dir",
    "backup_key",
    "backups_prefix",
    "base_key",
    "is_manifest",
    "manifest_key",
    "media_key",
    "media_prefix",
    "parse_backup",
    "parse_media",
    "parse_wal",
    "root",
    "stack_prefix",
    "wal_key",
    "wal_prefix",
]

WAL = "wal"  # the WAL agent's folder under a system id
BACKUPS = "backups"  # one folder per base backup under it
BASE = "base.tar.zst"  # a base backup's data: pg_basebackup's tar, zstd-compressed
MANIFEST = "manifest.json"  # a base backup's manifest, written last
WAL_SUFFIX = ".zst"  # an archived WAL file: its PostgreSQL name + this
MEDIA = "media"  # WordPress uploads, beside the system ids (never one: those are digits)


def root(prefix: str) -> str:
    """The prefix as keys start with it: no slashes around it ('' for none)."""
    return prefix.strip("/")


def _join(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (root(prefix), *parts) if p)


def stack_prefix(prefix: str) -> str:
    """Everything Lifeboat stores for one stack: the listing prefix ('' for none)."""
    r = root(prefix)
    return f"{r}/" if r else ""


def wal_prefix(prefix: str, system_id: str) -> str:
    return _join(prefix, str(system_id), WAL) + "/"


def wal_key(prefix: str, system_id: str, name: str) -> str:
    """An archived WAL file: a segment, a .partial, a .backup or a .history file."""
    return _join(prefix, str(system_id), WAL, f"{name}{WAL_SUFFIX}")


def backups_prefix(prefix: str, system_id: str) -> str:
    return _join(prefix, str(system_id), BACKUPS) + "/"


def backup_dir(prefix: str, system_id: str, backup_id: str) -> str:
    """A backup's folder, without the trailing slash (what its keys' rsplit gives)."""
    return _join(prefix, str(system_id), BACKUPS, backup_id)


def backup_key(prefix: str, system_id: str, backup_id: str, file: str) -> str:
    return f"{backup_dir(prefix, system_id, backup_id)}/{file}"


def base_key(prefix: str, system_id: str, backup_id: str) -> str:
    return backup_key(prefix, system_id, backup_id, BASE)


def manifest_key(prefix: str, system_id: str, backup_id: str) -> str:
    return backup_key(prefix, system_id, backup_id, MANIFEST)


def media_prefix(prefix: str) -> str:
    """Every media object of the stack: the listing prefix."""
    return _join(prefix, MEDIA) + "/"


def _media_parts(path: str) -> list[str] | None:
    parts = path.split("/")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    return parts


def media_key(prefix: str, path: str) -> str:
    """A media file, by its path relative to wp-content/uploads ("2026/11/photo.jpg")."""
    if _media_parts(path) is None:
        raise ValueError(f"not a relative media path: {path!r}")
    return _join(prefix, MEDIA, path)


def parse_media(prefix: str, key: str) -> str | None:
    """The path relative to uploads/ of a media object; None for any other key, and for a
    key no file could safely be written from (empty, "." or ".." parts)."""
    start = media_prefix(prefix)
    if not key.startswith(start) or _media_parts(key[len(start) :]) is None:
        return None
    return key[len(start) :]


def _under(prefix: str, key: str) -> list[str] | None:
    """The key's parts below the stack's prefix, below a system id; None when it is not
    under the prefix or is a media key."""
    start = stack_prefix(prefix)
    if not key.startswith(start):
        return None
    parts = key[len(start) :].split("/")
    return None if parts[0] == MEDIA else parts


def parse_wal(prefix: str, key: str) -> tuple[str, str] | None:
    """(system id, WAL file name) of an archived WAL object; None for any other key."""
    parts = _under(prefix, key)
    if parts is None or len(parts) != 3 or parts[1] != WAL or not parts[2].endswith(WAL_SUFFIX):
        return None
    return parts[0], parts[2].removesuffix(WAL_SUFFIX)


class BackupObject(NamedTuple):
    system_id: str
    backup_id: str
    file: str  # BASE, MANIFEST, or whatever else a backup's folder holds


def parse_backup(prefix: str, key: str) -> BackupObject | None:
    """What a key in a backup's folder is; None for any other key."""
    parts = _under(prefix, key)
    if parts is None or len(parts) != 4 or parts[1] != BACKUPS:
        return None
    return BackupObject(parts[0], parts[2], parts[3])


def is_manifest(prefix: str, key: str) -> bool:
    found = parse_backup(prefix, key)
    return found is not None and found.file == MANIFEST


def backup_area(prefix: str, key: str) -> bool:
    """Whether the key is anywhere under a system id's backups/ folder (a cut-off run may
    leave objects there that no manifest lists)."""
    parts = _under(prefix, key)
    return parts is not None and len(parts) > 2 and parts[1] == BACKUPS
