#!/usr/bin/python3
"""Lifeboat base backups: pg_basebackup streamed to Spaces (S3), and their restore.

Runs on a database droplet as postgres with Debian's python3, python3-boto3 and
python3-zstandard only, with the WAL agent's config (/etc/lifeboat/wal.conf) and S3 client
(wal_agent.py, beside this file).

  basebackup.py [--config FILE] take --id ID [--host DIR] [--port N] [--max-rate R]
      pg_basebackup (tar to stdout, no WAL: the archive has it) -> zstd -> one multipart
      upload to <prefix>/<system id>/backups/<ID>/base.tar.zst. Nothing goes to disk;
      memory is bounded by (in-flight parts + 1) x part size. Prints one JSON object: what
      the manifest needs (LSNs and timeline from pg_basebackup's own backup_manifest,
      sizes, SHA-256s). An upload cut off midway stays an incomplete multipart upload,
      which no listing shows.
  basebackup.py [--config FILE] restore --key KEY --sha256 HEX --pgdata DIR
      The object -> zstd -> tar, extracted into DIR (absent or empty), then one syncfs
      (so PostgreSQL's startup has nothing left to sync), the stored object's SHA-256
      checked. Prints one JSON object (bytes, seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import queue
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import zstandard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wal_agent  # noqa: E402 - beside this file on the droplet

PG_BIN = "/usr/lib/postgresql/15/bin"
READ_SIZE = 1 << 20
MIN_PART = 16 << 20
MAX_PARTS = 9000  # S3 allows 10000 parts; keep headroom for a database that grows mid-backup
IN_FLIGHT = 2


class Tap:
    """Reads a stream through, counting it, and picks one member's contents out of the tar
    it carries (pg_basebackup appends backup_manifest to the tar on stdout). No hash of
    the raw stream: that manifest has a checksum per file, and the stored object's
    SHA-256 covers the rest (hashing ~1 GB would cost ~1.5 s of CPU)."""

    def __init__(self, stream: IO[bytes], want: str) -> None:
        self.stream, self.want = stream, want.encode()
        self.bytes = 0
        self.found: bytes | None = None
        self._buf = b""  # an incomplete header
        self._skip = 0  # bytes of the current member (and padding) still to pass
        self._keep: bytearray | None = None
        self._keep_size = 0

    def read(self, n: int = READ_SIZE) -> bytes:
        data = self.stream.read(n)
        self.bytes += len(data)
        self._walk(data)
        return data

    def _walk(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                take = min(self._skip, len(view))
                if self._keep is not None and len(self._keep) < self._keep_size:
                    self._keep += view[: min(take, self._keep_size - len(self._keep))]
                    if len(self._keep) == self._keep_size:
                        self.found = bytes(self._keep)
                view, self._skip = view[take:], self._skip - take
                continue
            need = 512 - len(self._buf)
            self._buf += bytes(view[:need])
            view = view[need:]
            if len(self._buf) < 512:
                return
            header, self._buf = self._buf, b""
            if header == bytes(512):
                continue  # end-of-archive blocks
            name = header[:100].split(b"\0", 1)[0]
            size = _tar_size(header[124:136])
            self._skip = -(-size // 512) * 512
            self._keep = bytearray() if name == self.want else None
            self._keep_size = size
            if self._keep is not None and size == 0:
                self.found = b""


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b"\0 ") or b"0", 8)


def psql(host: str, port: int, query: str) -> str:
    out = subprocess.run(
        [f"{PG_BIN}/psql", "-XAtq", "-h", host, "-p", str(port), "-U", "postgres", "-c", query],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def take(
    settings: wal_agent.Settings, backup_id: str, host: str, port: int, level: int, max_rate: str
) -> dict:
    facts = psql(
        host,
        port,
        "SELECT system_identifier, current_setting('server_version_num'), pg_is_in_recovery(),"
        " (SELECT sum(pg_database_size(oid)) FROM pg_database),"
        " (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')"
        " FROM pg_control_system()",
    ).split("|")
    system_id, version, in_recovery, db_bytes, segment_size = facts
    # Parts big enough that the whole database fits in MAX_PARTS even uncompressed.
    part_size = max(MIN_PART, -(-int(db_bytes) // MAX_PARTS))
    parts_of_key = (settings.prefix.strip("/"), system_id, "backups", backup_id, "base.tar.zst")
    key = "/".join(p for p in parts_of_key if p)
    client = wal_agent.s3_client(settings)
    common = {"Bucket": settings.bucket, "Key": key}
    started = time.time()
    proc = subprocess.Popen(
        [f"{PG_BIN}/pg_basebackup", "-h", host, "-p", str(port), "-U", "postgres", "-w",
         "-D", "-", "-Ft", "-X", "none", "-c", "fast", *(["-r", max_rate] if max_rate else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    drain.start()
    tap = Tap(proc.stdout, "backup_manifest")
    stored = hashlib.sha256()
    stored_bytes = 0
    upload_id = client.create_multipart_upload(
        **common, Metadata={"backup-id": backup_id, "compression": "zstd"}
    )["UploadId"]
    parts: list[Future[dict[str, Any]]] = []
    pool = ThreadPoolExecutor(IN_FLIGHT)
    slots = threading.BoundedSemaphore(IN_FLIGHT)  # parts read but not yet uploaded

    def send(number: int, chunk: bytes) -> dict[str, Any]:
        try:
            reply = client.upload_part(
                **common, UploadId=upload_id, PartNumber=number, Body=chunk,
                ContentMD5=wal_agent.md5_b64(chunk),
            )  # fmt: skip
            return {"PartNumber": number, "ETag": reply["ETag"]}
        finally:
            slots.release()

    try:
        cctx = zstandard.ZstdCompressor(level=level, threads=-1)
        with cctx.stream_reader(tap, read_size=READ_SIZE) as compressed:
            while True:
                chunk = _read_full(compressed, part_size)
                if not chunk and parts:
                    break
                stored.update(chunk)
                stored_bytes += len(chunk)
                slots.acquire()
                parts.append(pool.submit(send, len(parts) + 1, chunk))
                for done in (p for p in parts if p.done()):
                    done.result()  # a failed part stops the backup now, not at the end
                if len(chunk) < part_size:
                    break
        rc = proc.wait(timeout=600)
        drain.join(timeout=60)
        if rc != 0:
            reason = b"".join(errors).decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"pg_basebackup failed (exit {rc}): {' / '.join(reason)}")
        if tap.found is None:
            raise RuntimeError("pg_basebackup's output had no backup_manifest")
        done_parts = [p.result() for p in parts]
        client.complete_multipart_upload(
            **common, UploadId=upload_id, MultipartUpload={"Parts": done_parts}
        )
        upload_id = None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if upload_id is not None:  # cut off: nothing visible stays behind
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(**common, UploadId=upload_id)
    stopped = time.time()
    manifest = json.loads(tap.found)
    ranges = manifest["WAL-Ranges"]
    return {
        "id": backup_id,
        "system_identifier": system_id,
        "pg_version_num": int(version),
        "source_in_recovery": in_recovery == "t",
        "wal_segment_size": int(segment_size),
        "timeline": ranges[0]["Timeline"],
        "wal_ranges": ranges,
        "start_lsn": ranges[-1]["Start-LSN"],
        "stop_lsn": ranges[0]["End-LSN"],
        "started_at": started,
        "stopped_at": stopped,
        "files": len(manifest.get("Files", [])),
        "objects": [
            {
                "key": key,
                "bytes": stored_bytes,
                "sha256": stored.hexdigest(),
                "raw_bytes": tap.bytes,
                "part_size": part_size,
                "parts": len(parts),
            }
        ],
    }


def _read_full(stream: Any, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the stream."""
    chunks, have = [], 0
    while have < size:
        data = stream.read(min(READ_SIZE * 4, size - have))
        if not data:
            break
        chunks.append(data)
        have += len(data)
    return b"".join(chunks)


class _Prefetch:
    """Reads the S3 body in a thread, hashing it there, a few MiB ahead of the reader:
    download and SHA-256 overlap with decompressing and writing files."""

    def __init__(self, body: Any, depth: int = 8) -> None:
        self.sha256, self.bytes = hashlib.sha256(), 0
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._rest = b""
        self._done = False
        self._thread = threading.Thread(target=self._pump, args=(body,), daemon=True)
        self._thread.start()

    def _pump(self, body: Any) -> None:
        try:
            while chunk := body.read(READ_SIZE):
                self.sha256.update(chunk)
                self.bytes += len(chunk)
                self._queue.put(chunk)
            self._queue.put(b"")
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            self._queue.put(e)

    def read(self, n: int = -1) -> bytes:
        while not self._rest and not self._done:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            self._rest, self._done = item, not item
        size = len(self._rest) if n < 0 else n
        data, self._rest = self._rest[:size], self._rest[size:]
        return data

    def finish(self) -> str:
        """Reads to the end (bytes after the zstd frame count too); the SHA-256."""
        while self.read(READ_SIZE):
            pass
        self._thread.join()
        return self.sha256.hexdigest()


def _syncfs(path: str) -> None:
    """One syncfs(2) for the whole extracted tree: the kernel writes everything back at
    once instead of one fsync per file (which stalled extraction at each large file)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", path)
    finally:
        os.close(fd)


def restore(settings: wal_agent.Settings, key: str, sha256: str, pgdata: str) -> dict:
    """Extract into pgdata (created 0700, or existing and empty). Refuses members that would
    land outside it and anything but files and directories (no tablespaces here)."""
    os.makedirs(pgdata, mode=0o700, exist_ok=True)
    if os.listdir(pgdata):
        raise RuntimeError(f"{pgdata} is not empty: restore only into an empty directory")
    started = time.time()
    client = wal_agent.s3_client(settings)
    source = _Prefetch(client.get_object(Bucket=settings.bucket, Key=key)["Body"])
    root = os.path.realpath(pgdata)
    files = 0
    with (
        zstandard.ZstdDecompressor().stream_reader(source, read_size=READ_SIZE) as raw,
        tarfile.open(fileobj=raw, mode="r|") as tar,
    ):
        for member in tar:
            path = os.path.realpath(os.path.join(root, member.name))
            if not path.startswith(root + os.sep):
                raise RuntimeError(f"refusing tar member outside the data directory: {member.name}")
            if member.isdir():
                os.makedirs(path, mode=0o700, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                src = tar.extractfile(member)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while block := src.read(READ_SIZE):
                        out.write(block)
                files += 1
            else:
                raise RuntimeError(f"unsupported tar member {member.name} (type {member.type!r})")
        while raw.read(READ_SIZE):  # the rest of the zstd frame, through the hash
            pass
    digest = source.finish()
    if digest != sha256:
        raise RuntimeError(f"{key}: SHA-256 {digest} differs from the manifest's {sha256}")
    _syncfs(root)
    return {"key": key, "bytes": source.bytes, "files": files, "seconds": time.time() - started}


def _reason(e: Exception) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        return f"{e.cmd[0]} failed: {(e.stderr or '').strip()}"
    if isinstance(e, RuntimeError):
        return str(e)
    return wal_agent.classify(e)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/lifeboat/wal.conf")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("take", help="a base backup of the local server to Spaces")
    one.add_argument("--id", required=True)
    one.add_argument("--host", default="/var/run/postgresql")
    one.add_argument("--port", type=int, default=5432)
    one.add_argument("--level", type=int, default=3, help="zstd level")
    one.add_argument("--max-rate", default="", help="pg_basebackup's --max-rate, e.g. 50M")
    back = sub.add_parser("restore", help="extract a base backup into an empty directory")
    back.add_argument("--key", required=True)
    back.add_argument("--sha256", required=True)
    back.add_argument("--pgdata", required=True)
    args = parser.parse_args(argv)
    settings = wal_agent.load_settings(args.config)
    try:
        if args.command == "take":
            result = take(settings, args.id, args.host, args.port, args.level, args.max_rate)
        else:
            result = restore(settings, args.key, args.sha256, args.pgdata)
    except Exception as e:  # one line, never a traceback with request details
        print(f"basebackup {args.command}: {_reason(e)}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
