#!/usr/bin/python3
"""Lifeboat media agent: keeps WordPress uploads in the stack's Spaces (S3) bucket.

Runs on each web droplet (lifeboat-media.service) with Debian's python3 and python3-boto3
only, beside spaces_client.py (the config file and S3 client it shares with the WAL
agent) and spaces_layout.py (the object layout), in /usr/local/lib/lifeboat/.

  media_agent.py [--config FILE] [--index FILE] --dir DIR sync
      one push, then one pull; prints "pushed N, waiting N, pulled N, failed N" and exits 0,
      or 1 with one line on stderr per file or object that failed (naming it); files
      changed less than `settle` seconds ago wait for the next push
  media_agent.py [--config FILE] [--index FILE] --dir DIR run
      push every push_interval s, pull every pull_interval s, until SIGTERM; a failure is
      logged and tried again next round, never an exit

Objects: <prefix>/media/<path under DIR> (spaces_layout.media_key), with metadata sha256
(hex, of the file) and size. A file uploaded on one droplet is on every other within
about settle + push_interval + pull_interval seconds (4 s with the defaults).

Push: every regular file under DIR whose (size, mtime_ns) is not what the index records
for it, and which has not changed for `settle` seconds (WordPress writes thumbnails in
place), is hashed and uploaded, unless the bucket already holds those bytes under its key
(then only the index learns it). Dotfiles, dot folders, temporary files (*~, *.tmp, *.part,
*.swp...) and symlinks are never uploaded. A file that changes while it is read is left
for the next round.

Pull: the media prefix is listed; an object is fetched when its file is missing here, or
when its ETag is not the one the index recorded, unless the local file changed since the
index saw it (a local edit waiting for push wins; the newer upload is last-writer-wins in
the bucket). A fetched object goes to a temp file in the same folder, its sha256 checked
against the metadata, fsynced, made 0644 and owned by DIR's owner (www-data on droplets),
and renamed into place; a mismatch leaves nothing behind and names the key. Folders are
created 0755, owned the same way. Paths are walked from DIR one component at a time
without following symlinks, so a symlink planted under uploads/ cannot send a write (or
a read, on push) outside it.

Deletions are not propagated, on purpose: media is never lost. A file deleted on a droplet
stays in the bucket and comes back on the next pull; removing media for good means
deleting the object (and then the files on each droplet).

Index (--index, default /var/lib/lifeboat/media-index.json, written atomically): for each
path, the (size, mtime_ns) of the local file, its sha256 and the object's ETag, as last
uploaded or downloaded by this agent. A file the agent downloaded is in it, so it is never
uploaded back. An index made for another DIR is ignored (started afresh: files are then
hashed, and those already stored are not uploaded again).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import mimetypes
import os
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import spaces_client  # beside this file (/usr/local/lib/lifeboat/ on a droplet)
import spaces_layout
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("lifeboat-media")

READ_SIZE = 1 << 20
MAX_PUT = 5 << 30  # S3's limit for one PUT; no WordPress upload comes near it
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".swp", ".swx", ".crdownload")
DEFAULT_INDEX = "/var/lib/lifeboat/media-index.json"


@dataclasses.dataclass(frozen=True)
class Settings(spaces_client.Settings):
    """media.conf: the shared Spaces keys (spaces_client.py) and the agent's own."""

    push_interval: float = 1.0  # seconds between walks of the uploads folder
    pull_interval: float = 2.0  # seconds between listings of the bucket
    settle: float = 1.0  # a file is uploaded once unchanged for this long


class Failure(Exception):
    """One file or object that could not be synced: a one-line reason naming it."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the agent last knew of a path: its local file and the object it matches."""

    size: int
    mtime_ns: int
    sha256: str
    etag: str

    @property
    def signature(self) -> tuple[int, int]:
        return (self.size, self.mtime_ns)


Signature = tuple[int, int]  # (size, mtime_ns)


# --- pure logic -------------------------------------------------------------------------


def skipped(name: str) -> bool:
    """Names never synced: dotfiles (and the agent's own temp files, which are dotfiles),
    editors' and downloaders' temporary files."""
    return name.startswith(".") or name.endswith("~") or name.lower().endswith(TEMP_SUFFIXES)


def to_push(
    files: dict[str, os.stat_result], index: dict[str, Entry], now_ns: int, settle_ns: int
) -> tuple[list[str], list[str]]:
    """(paths to upload now, paths changed too recently: next round). A path is a
    candidate when its (size, mtime_ns) is not the index's: new, or written since."""
    ready, waiting = [], []
    for path, st in sorted(files.items()):
        entry = index.get(path)
        if entry is not None and entry.signature == (st.st_size, st.st_mtime_ns):
            continue
        (ready if now_ns - st.st_mtime_ns >= settle_ns else waiting).append(path)
    return ready, waiting


def to_pull(
    listing: dict[str, str], files: dict[str, os.stat_result], index: dict[str, Entry]
) -> list[str]:
    """Paths to fetch: `listing` maps each object's path to its ETag. Fetched when there
    is no file, or the ETag is not the one recorded, unless the file changed since the
    index saw it (or was never seen): that file is waiting for push, which wins."""
    wanted = []
    for path, etag in sorted(listing.items()):
        st = files.get(path)
        entry = index.get(path)
        if st is None:
            wanted.append(path)
            continue
        if entry is None or entry.signature != (st.st_size, st.st_mtime_ns):
            continue  # a local file push has yet to handle
        if entry.etag != etag:
            wanted.append(path)
    return wanted


class Index:
    """The agent's state file: {"version": 1, "dir": DIR, "files": {path: [size,
    mtime_ns, sha256, etag]}}, written atomically (temp, fsync, rename)."""

    VERSION = 1

    def __init__(self, path: str, root: str) -> None:
        self.path = path
        self.root = root
        self.entries: dict[str, Entry] = {}
        self.dirty = False
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("index %s unreadable (%s): starting afresh", path, e)
            return
        if not isinstance(data, dict) or data.get("version") != self.VERSION:
            log.warning("index %s: unknown version: starting afresh", path)
            return
        if data.get("dir") != root:
            log.warning(
                "index %s was made for %s, not %s: starting afresh", path, data.get("dir"), root
            )
            return
        try:
            for name, (size, mtime_ns, sha256, etag) in data.get("files", {}).items():
                self.entries[name] = Entry(int(size), int(mtime_ns), str(sha256), str(etag))
        except (TypeError, ValueError) as e:
            log.warning("index %s damaged (%s): starting afresh", path, e)
            self.entries = {}

    def get(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def record(self, path: str, entry: Entry) -> None:
        if self.entries.get(path) != entry:
            self.entries[path] = entry
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        data = {
            "version": self.VERSION,
            "dir": self.root,
            "files": {
                p: [e.size, e.mtime_ns, e.sha256, e.etag] for p, e in sorted(self.entries.items())
            },
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o755, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}.{secrets.token_hex(4)}")
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)
        self.dirty = False


# --- the uploads folder, walked without following symlinks -------------------------------


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def scan(root: str) -> dict[str, os.stat_result]:
    """Every regular file under root that may be synced: path relative to root -> lstat.
    Symlinks (to files or folders) and skipped names are left out."""
    found: dict[str, os.stat_result] = {}

    def walk(directory: str, rel: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for e in entries:
            if skipped(e.name):
                continue
            path = f"{rel}{e.name}"
            try:
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, f"{path}/")
                elif e.is_file(follow_symlinks=False):
                    found[path] = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile

    walk(root, "")
    return found


@contextlib.contextmanager
def parent_dir(
    root_fd: int, path: str, create: bool, owner: tuple[int, int] | None
) -> Iterator[int]:
    """An fd for the folder holding `path` (relative to root), reached one component at a
    time with O_NOFOLLOW: a symlink anywhere on the way is an error, never followed.
    Missing folders are created (0755, chowned to owner) when `create`."""
    parts = path.split("/")[:-1]
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def describe(e: BaseException) -> str:
    """One line, never a secret (botocore names endpoint, bucket and key, not the keys)."""
    if isinstance(e, Failure):
        return str(e)
    if isinstance(e, (BotoCoreError, ClientError)):
        return f"S3: {e}"
    if isinstance(e, OSError):
        return f"{e.strerror or type(e).__name__}: {e.filename or ''}".rstrip(": ")
    return f"{type(e).__name__}: {e}"


# --- the agent --------------------------------------------------------------------------


class Agent:
    def __init__(self, settings: Settings, root: str, index_path: str) -> None:
        self.s = settings
        self.root = os.path.abspath(root)
        self.client = spaces_client.client(settings)
        self.index = Index(index_path, self.root)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        st = os.fstat(self.root_fd)
        # New files and folders belong to the folder's owner (www-data), as WordPress's own;
        # only root can give them away.
        self.owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        self.stop = threading.Event()
        self.waiting: list[str] = []  # changed too recently at the last push

    def close(self) -> None:
        os.close(self.root_fd)

    def key(self, path: str) -> str:
        return spaces_layout.media_key(self.s.prefix, path)

    # --- push -----------------------------------------------------------------------

    def push(self) -> tuple[int, list[str]]:
        """One walk: uploads what is ready. Returns (files uploaded, failures)."""
        ready, self.waiting = to_push(
            scan(self.root), self.index.entries, time.time_ns(), int(self.s.settle * 1e9)
        )
        pushed, failures = 0, []
        for path in ready:
            if self.stop.is_set():
                break
            try:
                pushed += self.push_one(path)
            except Exception as e:
                failures.append(f"push {path}: {describe(e)}")
        self.index.save()
        return pushed, failures

    def push_one(self, path: str) -> bool:
        """Upload one file unless the bucket already holds its bytes; True if uploaded."""
        with parent_dir(self.root_fd, path, create=False, owner=None) as dir_fd:
            fd = os.open(
                os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd
            )
        with os.fdopen(fd, "rb") as f:
            before = os.fstat(f.fileno())
            if not stat.S_ISREG(before.st_mode):
                return False
            if before.st_size > MAX_PUT:
                raise Failure(f"{before.st_size} bytes, more than one PUT takes")
            sha = hashlib.sha256()
            md5 = hashlib.md5(usedforsecurity=False)
            while block := f.read(READ_SIZE):
                sha.update(block)
                md5.update(block)
            digest = sha.hexdigest()
            signature = (before.st_size, before.st_mtime_ns)
            now = os.fstat(f.fileno())
            if (now.st_size, now.st_mtime_ns) != signature:
                return False  # written while read: next round
            entry = self.index.get(path)
            if entry is not None and entry.sha256 == digest:
                self.index.record(path, Entry(*signature, digest, entry.etag))  # touched only
                return False
            key = self.key(path)
            stored = self.head(key)
            if stored is not None and stored["Metadata"].get("sha256") == digest:
                self.index.record(path, Entry(*signature, digest, stored["ETag"]))
                return False
            f.seek(0)
            reply = self.client.put_object(
                Bucket=self.s.bucket,
                Key=key,
                Body=f,
                ContentLength=before.st_size,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                ContentType=mimetypes.guess_type(path)[0] or "application/octet-stream",
                Metadata={"sha256": digest, "size": str(before.st_size)},
            )
            after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != signature:
            return True  # changed during the upload: the next round uploads it again
        self.index.record(path, Entry(*signature, digest, reply["ETag"]))
        log.info("pushed %s (%d bytes)", path, before.st_size)
        return True

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.s.bucket, Key=key)
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return None
            raise

    # --- pull -----------------------------------------------------------------------

    def listing(self) -> dict[str, str]:
        """Every media object: path under uploads -> ETag (all pages)."""
        found: dict[str, str] = {}
        prefix = spaces_layout.media_prefix(self.s.prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.s.bucket, Prefix=prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                path = spaces_layout.parse_media(self.s.prefix, obj["Key"])
                if path is None or any(skipped(p) for p in path.split("/")):
                    continue  # nothing a file could safely be written from
                found[path] = obj["ETag"]
        return found

    def pull(self) -> tuple[int, list[str]]:
        """One listing: fetches what is missing or changed. Returns (fetched, failures)."""
        try:
            listing = self.listing()
        except (BotoCoreError, ClientError) as e:
            return 0, [f"list {spaces_layout.media_prefix(self.s.prefix)}: {describe(e)}"]
        pulled, failures = 0, []
        files = scan(self.root)
        for path in to_pull(listing, files, self.index.entries):
            if self.stop.is_set():
                break
            try:
                pulled += self.pull_one(path, present=path in files)
            except Exception as e:
                failures.append(f"pull {self.key(path)}: {describe(e)}")
        self.index.save()
        return pulled, failures

    def pull_one(self, path: str, present: bool) -> bool:
        """Fetch one object into place. `present`: the file is here, as the index saw it
        (to_pull), so the same bytes stored again need no write."""
        key = self.key(path)
        try:
            obj = self.client.get_object(Bucket=self.s.bucket, Key=key)
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return False  # deleted since the listing
            raise
        body = obj["Body"]
        try:
            expected = obj["Metadata"].get("sha256", "")
            if len(expected) != 64:
                raise Failure("the stored object has no sha256: not written")
            entry = self.index.get(path)
            if present and entry is not None and entry.sha256 == expected:
                self.index.record(path, dataclasses.replace(entry, etag=obj["ETag"]))
                return False  # the same bytes stored again: nothing to write
            size = self.write(path, body, expected, obj["ETag"])
        finally:
            body.close()
        log.info("pulled %s (%d bytes)", path, size)
        return True

    def write(self, path: str, body: Any, expected: str, etag: str) -> int:
        """Into a temp file beside the destination, checked, fsynced, 0644, chowned, then
        renamed: the destination is either untouched or complete and verified."""
        name = os.path.basename(path)
        with parent_dir(self.root_fd, path, create=True, owner=self.owner) as dir_fd:
            tmp = f".{name}.lifeboat-{secrets.token_hex(4)}"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
            )
            try:
                digest = hashlib.sha256()
                size = 0
                with os.fdopen(fd, "wb") as out:
                    while block := body.read(READ_SIZE):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
                    if digest.hexdigest() != expected:
                        raise Failure(
                            f"fetched bytes have sha256 {digest.hexdigest()}, the "
                            f"object's metadata says {expected}: corrupt object, not written"
                        )
                    out.flush()
                    os.fchmod(out.fileno(), 0o644)
                    if self.owner is not None:
                        os.fchown(out.fileno(), *self.owner)
                    os.fsync(out.fileno())
                    st = os.fstat(out.fileno())
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)  # the rename itself survives a crash
        self.index.record(path, Entry(st.st_size, st.st_mtime_ns, expected, etag))
        return size

    # --- the two commands -----------------------------------------------------------

    def sync(self) -> int:
        pushed, failures = self.push()
        pulled, more = self.pull()
        for line in failures + more:
            print(line, file=sys.stderr)
        failed = len(failures) + len(more)
        print(f"pushed {pushed}, waiting {len(self.waiting)}, pulled {pulled}, failed {failed}")
        return 1 if failures or more else 0

    def run(self) -> int:
        log.info("syncing %s with s3 bucket %s", self.root, self.s.bucket)
        ready = False
        next_push = next_pull = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_push:
                self.round("push", self.push)
                next_push = time.monotonic() + self.s.push_interval
            if now >= next_pull:
                failed = self.round("pull", self.pull)
                next_pull = time.monotonic() + self.s.pull_interval
                if not ready and not failed:
                    # Every object is here: the droplet may serve (Type=notify).
                    notify_systemd(b"READY=1")
                    ready = True
            self.stop.wait(max(0.0, min(next_push, next_pull) - time.monotonic()))
        notify_systemd(b"STOPPING=1")
        self.index.save()
        log.info("stopped")
        return 0

    def round(self, what: str, step: Any) -> bool:
        """One push or pull; failures are logged, tried again next round. True if any."""
        try:
            _, failures = step()
        except Exception as e:  # the walk or the index itself; never fatal in `run`
            failures = [f"{what}: {describe(e)}"]
        for line in failures:
            log.warning("%s", line)
        return bool(failures)


def notify_systemd(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message, address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/lifeboat/media.conf")
    parser.add_argument("--dir", required=True, help="WordPress's wp-content/uploads")
    parser.add_argument("--index", default=DEFAULT_INDEX, help="the agent's state file")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync", help="one push, then one pull; exit 1 if anything failed")
    sub.add_parser("run", help="push and pull in a loop until SIGTERM")
    args = parser.parse_args(argv)
    # `sync` says what it did in one line on stdout and each failure in one on stderr.
    level = logging.WARNING if args.command == "sync" else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    settings = spaces_client.load(args.config, Settings)
    if not os.path.isdir(args.dir):
        print(f"{args.dir}: no such folder", file=sys.stderr)
        return 2
    agent = Agent(settings, args.dir, args.index)
    try:
        if args.command == "sync":
            return agent.sync()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.stop.set())
        return agent.run()
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
