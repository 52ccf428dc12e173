#!/usr/bin/python3
"""Lifeboat WAL agent: archives PostgreSQL WAL to Spaces (S3) and restores it.

Runs on each database droplet as `postgres` (lifeboat-wal-agent.service) with Debian's
python3, python3-boto3 and python3-zstandard only. One long-lived process holds one warm
S3 client, so archive_command and restore_command are one curl call each: starting
Python, importing boto3 and creating a client per segment costs ~0.19 s and caps
archiving near 3 segments/s.

HTTP on a unix socket (mode 0600, so only postgres and root can ask):
  PUT /archive/<name>?path=<abs>&pgdata=<abs>  200 stored, or already stored identical,
                                                   or a past timeline's segment kept (below)
                                               409 different contents stored: not replaced
  GET /restore/<name>?dest=<abs>&pgdata=<abs>  200 written (fsynced, renamed into place)
                                               404 not in the archive
                                               422 the object is corrupt (SHA-256
                                                   mismatch, not zstd, no sha256): nothing
                                                   written
  GET /health[?s3=1]                           200 JSON counters; 503 if S3 does not answer
Other answers: 400 bad request, 502 S3 failed or unreachable, 500 anything else, each
with a one-line reason as the body; a restore's reasons name the object (s3://bucket/key).
restore.sh (wal-restore) turns these into exit codes: only 404 is "not there", which
its --strict mode (restores and drills) keeps apart from 422/502/500 (abort recovery).

Never overwrite, never block the current timeline. A segment of a timeline that a newer
one replaced (the next timeline's history file is archived) can legitimately exist in two
versions: the old primary's, which went on past the switch point, and the one archived
first. They agree up to the switch point, which is all a recovery along the newer
timeline reads. So for such a segment the stored object is kept, this copy is stored
beside it as <name>.diverged-<sha256 prefix> (the old primary's lost writes, for a
person to look at; retention expires it with its segment), and the answer is 200: the
archiver moves on to the current timeline. Other names with other contents stay 409.

PostgreSQL archives one file at a time; while it waits, the agent uploads the next files
marked ready in pg_wal/archive_status (read_ahead). It answers for such a file later
only if the file was not written since (same inode, size, mtime and ctime); otherwise
it hashes it and compares with the stored sha256 as for any other file.

Objects: <prefix>/<system identifier>/wal/<name>.zst (spaces_layout.py, beside this file,
owns the layout), one zstd frame, with metadata sha256 (hex, of the original bytes), size
(original bytes) and compression=zstd. The system identifier comes from global/pg_control,
so clusters that share a prefix (a re-bootstrap, a restore into a new cluster) never
collide on segment names. The config file and the S3 client are spaces_client.py's (beside
this file too), shared with the media agent on web droplets. A restore not found there is
read from the source archive when wal.conf names one (a cluster restored from another
stack: same system identifier); nothing is ever written to the source.

One-shot mode, one process per file (the benchmark's baseline; also handy by hand):
  agent.py [--config FILE] archive NAME PATH | restore NAME DEST
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import spaces_client  # beside this file (/usr/local/lib/lifeboat/ on a droplet)
import spaces_layout
import zstandard
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("lifeboat-wal-agent")

# A WAL segment (".partial" is archived at promotion), a backup history file, a timeline
# history file. Checked with fullmatch: names become object keys.
NAME = re.compile(r"[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history")
SEGMENT_OR_PARTIAL = re.compile(r"([0-9A-F]{8})[0-9A-F]{16}(\.partial)?")


def segment_timeline(name: str) -> int | None:
    """The timeline of a segment or .partial file (None for history and backup files,
    whose two versions never legitimately differ)."""
    m = SEGMENT_OR_PARTIAL.fullmatch(name)
    return int(m[1], 16) if m else None


READ_SIZE = 1 << 20
# Compressed bytes per multipart part (S3's minimum part is 5 MiB). A typical 16 MiB
# segment compresses far below this and goes up in one PUT; memory stays near two parts
# whatever the file size.
PART_SIZE = 8 << 20
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
CORRUPT = 422  # the restore answer for an object that fails its checks


class Failure(Exception):
    """An answer other than 200: an HTTP status and a one-line reason (never a secret)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ConditionFailed(Exception):
    """S3 refused a conditional write: the key appeared after our HEAD."""


@dataclasses.dataclass(frozen=True)
class Settings(spaces_client.Settings):
    """wal.conf: the shared Spaces keys (spaces_client.py) and the agent's own."""

    socket: str = "/run/lifeboat/wal.sock"
    zstd_level: int = 1  # on WAL as small as 3, a third of the CPU (~22 vs 66 ms/segment)
    read_ahead: int = 2  # files uploaded in the background while PostgreSQL waits; 0: off
    # A cluster restored from another stack's backups (`recover restore-cluster`) reads
    # the WAL its own archive lacks from there: same system identifier, read only.
    source_bucket: str = ""
    source_prefix: str = ""

    def source(self) -> Settings | None:
        """These settings aimed at the source archive; None when there is none."""
        if not self.source_bucket:
            return None
        return dataclasses.replace(
            self, bucket=self.source_bucket, prefix=self.source_prefix or self.prefix
        )


def load_settings(path: str) -> Settings:
    """The TOML config; refused when anyone but its owner could read the keys in it."""
    return spaces_client.load(path, Settings)


s3_client = spaces_client.client


def system_identifier(path: str, pgdata: str | None) -> str:
    """PostgreSQL's system identifier: the first 8 bytes of global/pg_control, in the
    machine's byte order. WAL lives in <pgdata>/pg_wal (PostgreSQL runs the commands
    there), but pg_rewind passes absolute paths from its own working directory."""
    candidates = []
    parent = os.path.dirname(path)
    if os.path.basename(parent) == "pg_wal":
        candidates.append(os.path.dirname(parent))
    if pgdata:
        candidates.append(pgdata)
    for directory in candidates:
        try:
            with open(os.path.join(directory, "global", "pg_control"), "rb") as f:
                return str(struct.unpack("=Q", f.read(8))[0])
        except (FileNotFoundError, struct.error):
            continue
    raise Failure(400, f"no readable global/pg_control for {path} (pgdata={pgdata})")


def file_signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


error_code = spaces_client.error_code


def head(client: Any, bucket: str, key: str) -> dict[str, str] | None:
    """The object's metadata; None when there is no such object (the check before every
    create-only write, base backups' too)."""
    try:
        return client.head_object(Bucket=bucket, Key=key)["Metadata"]
    except ClientError as e:
        if error_code(e) in NOT_FOUND:
            return None
        raise


def md5_b64(data: bytes) -> str:
    # Content-MD5: S3 rejects a body damaged on the way instead of storing it.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.client = s3_client(settings)
        # Every write is "create only" (If-None-Match: *): the HEAD before it decides,
        # this closes the race with a concurrent writer where the store supports it.
        self.create_only = spaces_client.CreateOnly(self.client)
        self.started = time.time()
        self.lock = threading.Lock()
        self.stats: dict[str, Any] = {"archived": 0, "restored": 0, "failed": 0, "read_ahead": 0}
        # Read-ahead: uploads in flight, and what they stored: object key -> (signature of
        # the file when read, its sha256).
        self.ahead = ThreadPoolExecutor(settings.read_ahead) if settings.read_ahead else None
        self.pending: dict[str, Future[None]] = {}
        self.uploaded: dict[str, tuple[tuple[int, ...], str]] = {}

    def key(self, system_id: str, name: str) -> str:
        return spaces_layout.wal_key(self.s.prefix, system_id, name)

    def count(self, what: str, **fields: Any) -> None:
        with self.lock:
            self.stats[what] += 1
            self.stats.update(fields)

    # --- archive --------------------------------------------------------------------

    def archive(self, name: str, path: str, pgdata: str | None) -> str:
        system_id = system_identifier(path, pgdata)
        key = self.key(system_id, name)
        self.read_ahead(name, path, system_id)
        with self.lock:
            pending = self.pending.get(key)
        if pending is not None:
            with contextlib.suppress(Exception):  # its failure is ours to find again
                pending.result()
        return self._archive(name, key, path, system_id)[0]

    def _archive(self, name: str, key: str, path: str, system_id: str) -> tuple[str, str]:
        """Stores path under key unless stored; returns (reason, sha256 of the file)."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            with self.lock:
                ahead = self.uploaded.pop(key, None)
            if ahead is not None and ahead[0] == file_signature(st):
                # Stored by read-ahead from this very file, not written since (any write
                # moves mtime and ctime): no need to hash it again.
                return f"{name} stored ahead, identical", ahead[1]
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = st.st_size
        stored = self.head(key)
        if stored is not None:
            return self.stored_already(name, system_id, path, stored, digest, size), digest
        try:
            sent = self.upload(key, path, digest, size)
        except ConditionFailed:
            stored = self.head(key)
            if stored is None:
                raise Failure(502, f"{name}: S3 refused the write but has no object") from None
            return self.stored_already(name, system_id, path, stored, digest, size), digest
        return f"stored {name} ({size} -> {sent} bytes)", digest

    def read_ahead(self, name: str, path: str, system_id: str) -> None:
        """Starts uploading the next files PostgreSQL has marked ready, while it waits on
        this one: PostgreSQL archives one file at a time, so a backlog drains only as fast
        as one upload unless work overlaps. It changes no answer: the archive request for
        each file still checks that what was stored came from this very file."""
        if self.ahead is None:
            return
        wal_dir = os.path.dirname(path)
        try:
            status = os.listdir(os.path.join(wal_dir, "archive_status"))
        except OSError:
            return
        ready = sorted(f.removesuffix(".ready") for f in status if f.endswith(".ready"))
        for other in ready:
            if other == name or not NAME.fullmatch(other):
                continue
            key = self.key(system_id, other)
            with self.lock:
                if len(self.pending) >= self.s.read_ahead:
                    return
                if key in self.pending or key in self.uploaded:
                    continue
                job = self.ahead.submit(
                    self._ahead, other, key, os.path.join(wal_dir, other), system_id
                )
                self.pending[key] = job

    def _ahead(self, name: str, key: str, path: str, system_id: str) -> None:
        try:
            signature = file_signature(os.stat(path))
            reason, digest = self._archive(name, key, path, system_id)
            if file_signature(os.stat(path)) != signature:
                return  # written to meanwhile: the archive request will hash it
            with self.lock:
                self.uploaded[key] = (signature, digest)
                while len(self.uploaded) > 1000:  # never asked for: forget the oldest
                    del self.uploaded[next(iter(self.uploaded))]
                self.stats["read_ahead"] += 1
            log.info("read ahead: %s", reason)
        except Exception as e:
            log.info("read ahead: %s: %s", name, classify(e)[1])
        finally:
            with self.lock:
                del self.pending[key]

    def head(self, key: str) -> dict[str, str] | None:
        return head(self.client, self.s.bucket, key)

    def stored_already(
        self, name: str, system_id: str, path: str, stored: dict[str, str], digest: str, size: int
    ) -> str:
        theirs = stored.get("sha256")
        if theirs == digest:
            return f"{name} already stored, identical"
        differs = f"stored sha256 {theirs or 'missing'}, this file {digest}"
        timeline = segment_timeline(name)
        if timeline is not None:
            newer = self.key(system_id, f"{timeline + 1:08X}.history")
            if self.head(newer) is not None:
                aside = self.key(system_id, f"{name}.diverged-{digest[:16]}")
                if self.head(aside) is None:
                    with contextlib.suppress(ConditionFailed):  # stored meanwhile: the same
                        self.upload(aside, path, digest, size)
                reason = (
                    f"{name} of timeline {timeline}, which timeline {timeline + 1} replaced, "
                    f"is already archived with other contents ({differs}): the stored one "
                    f"is kept, this copy stored beside it as {aside}"
                )
                log.warning("%s", reason)
                return reason
        raise Failure(
            409,
            f"{name} is already archived with different contents ({differs}): not overwriting",
        )

    def upload(self, key: str, path: str, digest: str, size: int) -> int:
        """Compress while reading; returns the compressed size. Retried once without
        the conditional header when the store does not implement it."""
        try:
            return self._upload(key, path, digest, size)
        except ClientError as e:
            if not self.create_only.unsupported(e):
                raise
            log.warning("the S3 store does not implement If-None-Match: relying on HEAD")
            return self._upload(key, path, digest, size)

    def _upload(self, key: str, path: str, digest: str, size: int) -> int:
        common = {"Bucket": self.s.bucket, "Key": key}
        meta = {"sha256": digest, "size": str(size), "compression": "zstd"}
        chunker = zstandard.ZstdCompressor(level=self.s.zstd_level).chunker(
            size=size, chunk_size=PART_SIZE
        )
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        sent = 0

        def send(chunk: bytes) -> None:
            nonlocal upload_id, sent
            if upload_id is None:
                upload_id = self.client.create_multipart_upload(**common, Metadata=meta)["UploadId"]
            n = len(parts) + 1
            reply = self.client.upload_part(
                **common, UploadId=upload_id, PartNumber=n, Body=chunk, ContentMD5=md5_b64(chunk)
            )
            parts.append({"PartNumber": n, "ETag": reply["ETag"]})
            sent += len(chunk)

        try:
            with open(path, "rb") as f:
                while block := f.read(READ_SIZE):
                    for chunk in chunker.compress(block):
                        send(chunk)
                tail = b"".join(chunker.finish())
            if upload_id is None:
                self.client.put_object(**common, Body=tail, Metadata=meta, ContentMD5=md5_b64(tail))
                return len(tail)
            if tail:
                send(tail)
            self.client.complete_multipart_upload(
                **common, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            upload_id = None  # completed: nothing to abort
            return sent
        except ClientError as e:
            if self.create_only.refused(e):
                raise ConditionFailed() from e
            raise
        finally:
            # An unfinished multipart upload is invisible; abort it so it costs nothing.
            # (One left by a crash is removed by the bucket's abort-incomplete rule.)
            if upload_id is not None:
                with contextlib.suppress(BotoCoreError, ClientError):
                    self.client.abort_multipart_upload(**common, UploadId=upload_id)

    # --- restore --------------------------------------------------------------------

    def restore(self, name: str, dest: str, pgdata: str | None) -> str:
        """Every reason names the object: 404 not in the archive, 422 corrupt, 502 S3
        failed (asking, or while reading the body)."""
        system_id = system_identifier(dest, pgdata)
        places = [self.s] + ([source] if (source := self.s.source()) else [])
        tried = []
        for place in places:
            key = spaces_layout.wal_key(place.prefix, system_id, name)
            where = f"s3://{place.bucket}/{key}"
            try:
                obj = self.client.get_object(Bucket=place.bucket, Key=key)
                break
            except ClientError as e:
                if error_code(e) not in NOT_FOUND:
                    raise Failure(502, f"{where}: S3: {e}") from None
                tried.append(where)
            except BotoCoreError as e:
                raise Failure(502, f"{where}: S3: {e}") from None
        else:
            raise Failure(404, f"{name} is not in the archive ({' nor '.join(tried)})")
        body = obj["Body"]
        try:
            expected = obj["Metadata"].get("sha256")
            if not expected:
                raise Failure(CORRUPT, f"{where}: corrupt object: no sha256 in its metadata")
            size = self._write(where, body, dest, expected)
        except zstandard.ZstdError as e:
            raise Failure(CORRUPT, f"{where}: corrupt object: {e}; nothing written") from None
        except (BotoCoreError, ClientError) as e:
            raise Failure(502, f"{where}: S3 failed while reading it: {e}") from None
        finally:
            body.close()
        return f"restored {name} ({size} bytes)"

    @staticmethod
    def _write(where: str, body: Any, dest: str, expected: str) -> int:
        """Decompress into a temp file beside dest, check, fsync, rename: dest is either
        absent or complete and verified."""
        directory = os.path.dirname(dest)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(dest)}.")
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                reader = zstandard.ZstdDecompressor().stream_reader(body, read_size=READ_SIZE)
                while block := reader.read(READ_SIZE):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                if digest.hexdigest() != expected:
                    raise Failure(
                        CORRUPT,
                        f"{where}: corrupt object: restored bytes have sha256 "
                        f"{digest.hexdigest()}, its metadata says {expected}; nothing written",
                    )
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return size

    # --- health ---------------------------------------------------------------------

    def health(self, check_s3: bool) -> tuple[int, str]:
        with self.lock:
            report = dict(self.stats, uptime_s=round(time.time() - self.started, 1))
        status = 200
        if check_s3:
            try:
                self.client.head_bucket(Bucket=self.s.bucket)
                report["s3"] = "ok"
            except (BotoCoreError, ClientError) as e:
                report["s3"] = str(e)
                status = 503
        return status, json.dumps(report)


def classify(e: BaseException) -> tuple[int, str]:
    """An exception as (status, reason). botocore messages name the endpoint, bucket and
    key, never the keys (requests are signed in headers)."""
    if isinstance(e, Failure):
        return e.status, str(e)
    if isinstance(e, (BotoCoreError, ClientError)):
        return 502, f"S3: {e}"
    if isinstance(e, zstandard.ZstdError):
        return 500, f"corrupt archive object: {e}"
    if isinstance(e, FileNotFoundError):  # not 404: restore_command is quiet about those
        return 400, f"no such file or directory: {e.filename}"
    if isinstance(e, OSError):
        return 500, f"{e.strerror}: {e.filename}"
    log.exception("unexpected error")
    return 500, f"internal error: {type(e).__name__}"


def absolute(query: dict[str, str], field: str) -> str:
    value = query.get(field, "")
    if not os.path.isabs(value) or "\0" in value:
        raise Failure(400, f"{field} must be an absolute path")
    return os.path.normpath(value)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.route("GET")

    def do_PUT(self) -> None:
        self.route("PUT")

    def route(self, method: str) -> None:
        started = time.monotonic()
        agent = self.server.agent
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        _, action, *rest = url.path.split("/", 2) + [""]
        name = rest[0] if rest else ""
        try:
            if method == "GET" and url.path == "/health":
                status, reason = agent.health(query.get("s3") == "1")
            elif (method, action) in {("PUT", "archive"), ("GET", "restore")}:
                if not NAME.fullmatch(name):
                    raise Failure(400, f"not a WAL file name: {name[:80]!r}")
                if action == "archive":
                    reason = agent.archive(name, absolute(query, "path"), query.get("pgdata"))
                    agent.count("archived", last_archived=name, last_archived_at=time.time())
                else:
                    reason = agent.restore(name, absolute(query, "dest"), query.get("pgdata"))
                    agent.count("restored")
                status = 200
                log.info("%s: %s in %.0f ms", action, reason, 1000 * (time.monotonic() - started))
            else:
                raise Failure(404, f"no such endpoint: {method} {url.path[:80]}")
        except Exception as e:
            status, reason = classify(e)
            if status != 404:  # restore_command asks for files that do not exist yet
                agent.count("failed", last_error=reason, last_error_at=time.time())
            log.log(logging.INFO if status == 404 else logging.WARNING, "%s", reason)
        body = (reason + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # route() logs each request once, with its reason


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    # Requests in flight finish (bounded by the S3 timeouts) before the socket closes.
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a killed agent
        old = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            super().__init__(path, Handler)
        finally:
            os.umask(old)


def notify_systemd(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message, address)


def serve(agent: Agent) -> int:
    server = Server(agent.s.socket, agent)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="http")
    thread.start()
    log.info("serving on %s for s3 bucket %s", agent.s.socket, agent.s.bucket)
    notify_systemd(b"READY=1")
    stop.wait()
    notify_systemd(b"STOPPING=1")
    server.shutdown()
    thread.join()
    server.server_close()
    if agent.ahead is not None:
        agent.ahead.shutdown(cancel_futures=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(agent.s.socket)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/lifeboat/wal.conf")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the HTTP API on the unix socket (the default)")
    for command, target in (("archive", "path"), ("restore", "dest")):
        one = sub.add_parser(command, help=f"one {command} in this process, then exit")
        one.add_argument("name")
        one.add_argument(target)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    settings = load_settings(args.config)
    if args.command in (None, "serve"):
        return serve(Agent(settings))
    agent = Agent(dataclasses.replace(settings, read_ahead=0))  # exits after one file
    try:
        if not NAME.fullmatch(args.name):
            raise Failure(400, f"not a WAL file name: {args.name!r}")
        if args.command == "archive":
            print(agent.archive(args.name, os.path.abspath(args.path), os.getcwd()))
        else:
            print(agent.restore(args.name, os.path.abspath(args.dest), os.getcwd()))
    except Exception as e:
        print(classify(e)[1], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
