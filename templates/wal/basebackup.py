#!/usr/bin/python3
"""Lifeboat base backups: pg_basebackup streamed to Spaces (S3), and their restore.

Runs on a database droplet as postgres with Debian's python3, python3-boto3 and
python3-zstandard only, with the WAL agent's config (/etc/lifeboat/wal.conf) and S3 client
(wal_agent.py) and the object layout (spaces_layout.py), both beside this file.

  basebackup.py [--config FILE] take --id ID [--host DIR] [--port N] [--max-rate R]
      pg_basebackup (tar to stdout, no WAL: the archive has it) -> zstd -> one multipart
      upload to <prefix>/<system id>/backups/<ID>/base.tar.zst (spaces_layout.py).
      Nothing goes to disk; memory is bounded by (in-flight parts + 1) x part size.
      Prints one JSON object: what the manifest needs (LSNs and timeline from
      pg_basebackup's own backup_manifest, sizes, SHA-256s). An upload cut off midway
      stays an incomplete multipart upload, which no listing shows. Never overwrites an
      object: an existing key is refused before pg_basebackup starts, and the upload is
      "create only" as the WAL agent's are (spaces_client.CreateOnly).
  basebackup.py [--config FILE] restore [--source] --key KEY --sha256 HEX --pgdata DIR
      The object -> zstd -> tar, extracted into a new directory beside DIR, then one
      syncfs (so PostgreSQL's startup has nothing left to sync), the stored object's
      SHA-256 checked, and only then renamed to DIR (absent or empty): a failed check
      leaves DIR as it was and nothing extracted behind. Prints one JSON object (bytes,
      seconds).
  basebackup.py [--config FILE] wal-list --pgdata DIR
      The names of the WAL files archived for DIR's cluster (its system identifier from
      global/pg_control), as one JSON object: what a restore checks its replay against.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import zstandard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spaces_client  # noqa: E402 - beside this file on the droplet
import spaces_layout  # noqa: E402
import wal_agent  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

PG_BIN = "/usr/lib/postgresql/15/bin"
READ_SIZE = 1 << 20
MIN_PART = 8 << 20  # S3's minimum part is 5 MiB; memory is about (IN_FLIGHT + 2) parts
MAX_PARTS = 9000  # S3 allows 10000 parts; keep headroom for a database that grows mid-backup
IN_FLIGHT = 2


class TarWalker:
    """Follows a tar stream fed in chunks of any size, handing each member's bytes to the
    sink `on_member(name, size, type)` returns (None: skip it). pg_basebackup writes plain
    ustar (names under 100 bytes, no pax headers); anything else is refused. Written for
    speed: tarfile's stream mode reads 10 KiB at a time and copies every byte twice."""

    def __init__(self, on_member: Callable[[str, int, bytes], Sink | None]) -> None:
        self.on_member = on_member
        self._buf = b""  # an incomplete header
        self._left = 0  # bytes of the current member still to come
        self._pad = 0  # then padding to the next 512-byte block
        self._sink: Sink | None = None
        self.ended = False  # the end-of-archive block was seen

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left:
                n = min(self._left, len(view))
                if self._sink is not None:
                    self._sink.write(view[:n])
                view, self._left = view[n:], self._left - n
                if not self._left:
                    self._close()
                continue
            if self._pad:
                n = min(self._pad, len(view))
                view, self._pad = view[n:], self._pad - n
                continue
            need = 512 - len(self._buf)
            self._buf += bytes(view[:need])
            view = view[need:]
            if len(self._buf) < 512:
                return
            header, self._buf = self._buf, b""
            if header == ZERO_BLOCK:
                self.ended = True  # end-of-archive blocks
                continue
            name, size, kind = _parse_header(header)
            self._sink = self.on_member(name, size, kind)
            self._left, self._pad = size, -size % 512
            if not size:
                self._close()

    def _close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


class Sink:
    """Where a member's bytes go."""

    def write(self, data: memoryview) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Collect(Sink):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done = False

    def write(self, data: memoryview) -> None:
        self.data += data

    def close(self) -> None:
        self.done = True


class FileSink(Sink):
    """A new file; on close, its fsync goes to `flusher` so the disk writes it back while
    the next files are extracted (an fsync inline stalls extraction at every large file,
    one syncfs at the end serializes the whole writeback after it)."""

    # Files written but not yet synced hold a descriptor each: bounded, far below ulimit -n.
    open_files = threading.BoundedSemaphore(64)

    def __init__(self, path: str, flusher: ThreadPoolExecutor, pending: list[Future]) -> None:
        FileSink.open_files.acquire()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.flusher, self.pending = flusher, pending

    def write(self, data: memoryview) -> None:
        while data:
            data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        self.pending.append(self.flusher.submit(_fsync_close, self.fd))


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
        FileSink.open_files.release()


ZERO_BLOCK = bytes(512)


def _parse_header(header: bytes) -> tuple[str, int, bytes]:
    """(name, size, type flag) of a ustar header, its checksum checked."""
    stored = int(header[148:156].strip(b"\0 ") or b"0", 8)
    if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise RuntimeError("corrupt tar header (checksum mismatch)")
    name = header[:100].split(b"\0", 1)[0].decode()
    prefix = header[345:500].split(b"\0", 1)[0].decode() if header[257:262] == b"ustar" else ""
    if prefix:
        name = f"{prefix}/{name}"
    field = header[124:136]
    if field[0] & 0x80:  # base-256 for members of 8 GiB and more
        size = int.from_bytes(field[1:], "big")
    else:
        size = int(field.strip(b"\0 ") or b"0", 8)
    return name, size, header[156:157]


class Tap:
    """Reads pg_basebackup's compressed stream through while a thread of its
    own decompresses it and walks the tar it carries to pick out backup_manifest (which
    pg_basebackup appends to the tar on stdout). So the manifest comes from the very bytes
    that are stored, and those are proven to be one whole zstd frame holding a whole tar
    before the upload completes. zstd releases the GIL: the walk overlaps the upload."""

    def __init__(self, stream: IO[bytes], want: str) -> None:
        self.stream = stream
        self.raw_bytes = 0  # the tar's
        self._found = Collect()
        self._walker = TarWalker(lambda name, size, kind: self._found if name == want else None)
        self._queue: queue.Queue[bytes] = queue.Queue(4)  # a few 4 MiB reads ahead
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._walk, daemon=True)
        self._thread.start()

    def _walk(self) -> None:
        dctx = zstandard.ZstdDecompressor().decompressobj()
        ended = False  # the reader's b"" taken
        try:
            while chunk := self._queue.get():
                data = dctx.decompress(chunk)
                self.raw_bytes += len(data)
                self._walker.feed(data)
            ended = True
            if not dctx.eof:
                raise RuntimeError("pg_basebackup's zstd stream ends inside its frame")
            if not self._walker.ended:
                raise RuntimeError("pg_basebackup's tar ends before its end-of-archive block")
        except BaseException as e:  # noqa: BLE001 - raised again by finish()
            self._error = e
            while not ended and self._queue.get():  # the reader must never block on a full queue
                pass

    def read(self, n: int = READ_SIZE) -> bytes:
        data = self.stream.read(n)
        self._queue.put(data)  # b"" at the end: the walk finishes
        return data

    def finish(self) -> bytes:
        """Once the stream has been read to its end: backup_manifest's bytes."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if not self._found.done:
            raise RuntimeError("pg_basebackup's output had no backup_manifest")
        return bytes(self._found.data)


def psql(host: str, port: int, query: str) -> str:
    out = subprocess.run(
        [f"{PG_BIN}/psql", "-XAtq", "-h", host, "-p", str(port), "-U", "postgres", "-c", query],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
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
    key = spaces_layout.base_key(settings.prefix, system_id, backup_id)
    client = wal_agent.s3_client(settings)
    create_only = spaces_client.CreateOnly(client)
    common = {"Bucket": settings.bucket, "Key": key}
    if _exists(client, settings.bucket, key):
        raise RuntimeError(f"s3://{settings.bucket}/{key} already exists: not overwriting it")
    started = time.time()
    proc = subprocess.Popen(
        [
            f"{PG_BIN}/pg_basebackup",
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-w",
            "-D",
            "-",
            "-Ft",
            "-X",
            "none",
            "-c",
            "fast",
            # pg_basebackup's own multi-threaded zstd: piping the uncompressed tar through
            # Python to compress it cost about 1 s per 800 MB here (bench/backup.py).
            "--compress",
            f"client-zstd:level={level},workers={os.cpu_count() or 1}",
            *(["-r", max_rate] if max_rate else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
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
                **common,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
                ContentMD5=wal_agent.md5_b64(chunk),
            )
            return {"PartNumber": number, "ETag": reply["ETag"]}
        finally:
            slots.release()

    try:
        while True:
            chunk = _read_full(tap, part_size)
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
        found = tap.finish()
        done_parts = [p.result() for p in parts]
        _complete(client, create_only, common, upload_id, done_parts)
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
    manifest = json.loads(found)
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
                "raw_bytes": tap.raw_bytes,
                "part_size": part_size,
                "parts": len(parts),
            }
        ],
    }


def _exists(client: Any, bucket: str, key: str) -> bool:
    return wal_agent.head(client, bucket, key) is not None


def _complete(
    client: Any, create_only: spaces_client.CreateOnly, common: dict, upload_id: str, parts: list
) -> None:
    """Completes the upload "create only": refused, naming the key, when the key appeared
    since the check before pg_basebackup started; the store that does not implement the
    header is asked again without it, after a new check."""
    where = f"s3://{common['Bucket']}/{common['Key']}"
    for _ in range(2):
        try:
            client.complete_multipart_upload(
                **common, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return
        except ClientError as e:
            if create_only.refused(e):
                raise RuntimeError(f"{where} appeared meanwhile: not overwriting it") from None
            if not create_only.unsupported(e):
                raise
            if _exists(client, common["Bucket"], common["Key"]):
                raise RuntimeError(f"{where} already exists: not overwriting it") from None


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


class _Ahead:
    """Runs `read()` in a thread until it returns b"", a few chunks ahead of the consumer,
    optionally hashing what it read: each stage of a restore (download + SHA-256,
    decompression, writing files) gets its own thread, and zstd and hashlib release the
    GIL, so the stages overlap."""

    def __init__(self, read: Callable[[], bytes], hashed: bool = False, depth: int = 8) -> None:
        self.sha256 = hashlib.sha256() if hashed else None
        self.bytes = 0
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._rest = b""
        self._done = False
        self._error: BaseException | None = None  # what the thread raised, raised again
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()

    def _pump(self, read: Callable[[], bytes]) -> None:
        try:
            while chunk := read():
                if self.sha256 is not None:
                    self.sha256.update(chunk)
                self.bytes += len(chunk)
                self._queue.put(chunk)
            self._queue.put(b"")
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._queue.put(e)

    def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            raise self._error
        while not self._rest and not self._done:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._error = item  # the thread has ended: never wait on it again
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
        return self.sha256.hexdigest() if self.sha256 is not None else ""


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
    """Extract into a new directory beside pgdata (pgdata absent, or existing and empty),
    check the object's SHA-256, and only then rename it to pgdata: whatever fails, pgdata
    is left as it was and the extracted files are removed. Refuses members that would
    land outside it and anything but files and directories (no tablespaces here)."""
    pgdata = os.path.abspath(pgdata)
    if os.path.isdir(pgdata) and os.listdir(pgdata):
        raise RuntimeError(f"{pgdata} is not empty: restore only into an empty directory")
    parent = os.path.dirname(pgdata)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(pgdata)}.restoring-")
    try:
        result = _extract(settings, key, sha256, work)
        os.rename(work, pgdata)  # replaces pgdata when it is an empty directory
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _fsync_dir(parent)  # the rename survives a crash
    return result


def _extract(settings: wal_agent.Settings, key: str, sha256: str, work: str) -> dict:
    started = time.time()
    where = f"s3://{settings.bucket}/{key}"
    client = wal_agent.s3_client(settings)
    try:
        body = client.get_object(Bucket=settings.bucket, Key=key)["Body"]
    except Exception as e:
        raise RuntimeError(f"{where}: {_reason(e)}") from None
    source = _Ahead(lambda: body.read(READ_SIZE), hashed=True)
    root = os.path.realpath(work)
    files = 0
    flusher, flushing = ThreadPoolExecutor(2), []

    def place(name: str, size: int, kind: bytes) -> Sink | None:
        nonlocal files
        path = os.path.realpath(os.path.join(root, name))
        if not path.startswith(root + os.sep):
            raise RuntimeError(f"refusing tar member outside the data directory: {name}")
        if kind == b"5":
            os.makedirs(path, mode=0o700, exist_ok=True)
            return None
        if kind not in (b"0", b"\0"):
            raise RuntimeError(f"unsupported tar member {name} (type {kind!r})")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        files += 1
        return FileSink(path, flusher, flushing)

    walker = TarWalker(place)
    raw = zstandard.ZstdDecompressor().stream_reader(source, read_size=READ_SIZE)
    tar = _Ahead(lambda: raw.read(READ_SIZE * 4), depth=4)
    try:
        while chunk := tar.read():
            walker.feed(chunk)
        for job in flushing:
            job.result()
        if not walker.ended:
            raise RuntimeError("the tar stream ends before its end-of-archive block")
    except Exception as e:
        # A corrupt object usually breaks decompression or the tar stream before its
        # end: read the rest (decompressor first: one reader of `source` at a time), so
        # the error names the cause when it is the checksum.
        digest = ""
        with contextlib.suppress(Exception):
            tar.finish()
        with contextlib.suppress(Exception):
            digest = source.finish()
        if digest and digest != sha256:
            raise RuntimeError(_mismatch(where, digest, sha256)) from None
        raise RuntimeError(f"{where}: {_reason(e)}") from None
    finally:
        flusher.shutdown()
        raw.close()
    digest = source.finish()
    if digest != sha256:
        raise RuntimeError(_mismatch(where, digest, sha256))
    _syncfs(root)  # the directories (the files are synced already)
    return {"key": key, "bytes": source.bytes, "files": files, "seconds": time.time() - started}


def _mismatch(where: str, digest: str, sha256: str) -> str:
    return f"{where}: SHA-256 {digest} differs from the manifest's {sha256}: corrupt object"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wal_list(settings: wal_agent.Settings, pgdata: str) -> dict:
    """The archived WAL file names of pgdata's cluster."""
    system_id = wal_agent.system_identifier(os.path.join(pgdata, "global"), pgdata)
    prefix = spaces_layout.wal_prefix(settings.prefix, system_id)
    client = wal_agent.s3_client(settings)
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix=prefix
    ):
        for obj in page.get("Contents", []):
            parsed = spaces_layout.parse_wal(settings.prefix, obj["Key"])
            if parsed is not None and parsed[0] == system_id:
                names.append(parsed[1])
    return {"system_identifier": system_id, "prefix": prefix, "names": sorted(names)}


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
    # Level 1 (multi-threaded): a backup is CPU-bound here, and on data pages level 3
    # saves only a few percent of the bytes.
    one.add_argument("--level", type=int, default=1, help="zstd level")
    one.add_argument("--max-rate", default="", help="pg_basebackup's --max-rate, e.g. 50M")
    back = sub.add_parser("restore", help="extract a base backup into an empty directory")
    back.add_argument("--key", required=True)
    back.add_argument("--sha256", required=True)
    back.add_argument("--pgdata", required=True)
    back.add_argument(
        "--source", action="store_true", help="from the source archive wal.conf names"
    )
    wal = sub.add_parser("wal-list", help="the WAL archived for a data directory's cluster")
    wal.add_argument("--pgdata", required=True)
    args = parser.parse_args(argv)
    settings = wal_agent.load_settings(args.config)
    try:
        if args.command == "take":
            result = take(settings, args.id, args.host, args.port, args.level, args.max_rate)
        elif args.command == "restore":
            if args.source and (settings := settings.source()) is None:
                raise RuntimeError("--source: wal.conf names no source_bucket")
            result = restore(settings, args.key, args.sha256, args.pgdata)
        else:
            result = wal_list(settings, args.pgdata)
    except Exception as e:  # one line, never a traceback with request details
        print(f"basebackup {args.command}: {_reason(e)}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
