"""Benchmark of WAL archiving (not a test): prints figures, asserts nothing.

    uv run python -m bench.wal [--segments 40] [--restores 10]

Against one moto S3 server on a free 127.0.0.1 port, in one run, archiving the same
16 MiB WAL-like segments one after another, as PostgreSQL's archiver drains a backlog:
- archive_command through lifeboat-wal-agent (templates/wal: curl to the warm daemon,
  which reads ahead the segments marked .ready in pg_wal/archive_status);
- the naive baseline: one Debian python3 process per segment (the agent's one-shot mode:
  same compression and upload code, plus interpreter start, boto3 import, client);
and the same for restore_command. Needs python3-boto3, python3-zstandard and curl.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from tasks.render import TEMPLATES, render

AGENT = TEMPLATES / "wal" / "wal_agent.py"
PYTHON = "/usr/bin/python3"
BUCKET = "bench-wal"
SEGMENT = 16 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wal_like(seed: int) -> bytes:
    """8 KiB pages of some random bytes and a repeated run: compresses roughly like WAL."""
    rng = random.Random(seed)
    pages = [rng.randbytes(600) + bytes([rng.randrange(256)]) * (8192 - 600) for _ in range(2048)]
    return b"".join(pages)


def _timed(commands: list[list[str]], cwd: Path, done: list[str] | None = None) -> float:
    """Runs the commands one after another, as the archiver does; seconds in all. With
    `done`, marks that WAL file done after its command, as PostgreSQL does."""
    status = cwd / "pg_wal" / "archive_status"
    started = time.monotonic()
    for i, cmd in enumerate(commands):
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=300)
        if done is not None:
            (status / f"{done[i]}.ready").rename(status / f"{done[i]}.done")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--restores", type=int, default=10)
    args = parser.parse_args()
    n, r = args.segments, min(args.restores, args.segments)

    with tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp_name:
        tmp = Path(tmp_name)
        port = _free_port()
        env = os.environ | {"S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true", "TMPDIR": tmp_name}
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        agent = None
        try:
            _wait(lambda: _port_open(port), "moto did not start")
            endpoint = f"http://127.0.0.1:{port}"
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="nyc3",
                aws_access_key_id="BENCH",
                aws_secret_access_key="bench",
                config=Config(
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
            s3.create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "nyc3"}
            )

            # A data directory: pg_control (system identifier) and n segments, hard links
            # to four distinct contents.
            pgdata = tmp / "pgdata"
            (pgdata / "global").mkdir(parents=True)
            (pgdata / "global" / "pg_control").write_bytes(struct.pack("=Q", 7300000000000000001))
            wal = pgdata / "pg_wal"
            wal.mkdir()
            sources = []
            for i in range(4):
                sources.append(tmp / f"source-{i}")
                sources[-1].write_bytes(_wal_like(i))
            names = [f"00000001{i // 256:08X}{i % 256:08X}" for i in range(1, n + 1)]
            for i, name in enumerate(names):
                os.link(sources[i % 4], wal / name)

            configs = {}
            for mode in ("agent", "naive"):
                conf = tmp / f"{mode}.conf"
                fd = os.open(conf, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(
                        render(
                            "wal/wal.conf.j2",
                            endpoint=endpoint,
                            region="nyc3",
                            bucket=BUCKET,
                            prefix=f"bench/{mode}",
                            access_key="BENCH",
                            secret_key="bench",
                            socket=str(tmp / "wal.sock"),
                        )
                    )
                configs[mode] = conf
            scripts = {}
            for kind in ("archive", "restore"):
                scripts[kind] = tmp / f"wal-{kind}"
                scripts[kind].write_text(
                    render(f"wal/{kind}.sh.j2", socket=str(tmp / "wal.sock"), timeout=300)
                )
                scripts[kind].chmod(0o755)

            agent = subprocess.Popen(
                [PYTHON, str(AGENT), "--config", str(configs["agent"])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait(lambda: (tmp / "wal.sock").exists(), "the agent did not start")

            oneshot = [PYTHON, str(AGENT), "--config", str(configs["naive"])]
            archive = {
                "agent": [[str(scripts["archive"]), f"pg_wal/{nm}", nm] for nm in names],
                "naive": [[*oneshot, "archive", nm, f"pg_wal/{nm}"] for nm in names],
            }
            restore = {
                "agent": [[str(scripts["restore"]), nm, "pg_wal/RECOVERYXLOG"] for nm in names[:r]],
                "naive": [[*oneshot, "restore", nm, "pg_wal/RECOVERYXLOG"] for nm in names[:r]],
            }
            results = {}
            status = wal / "archive_status"
            status.mkdir()
            for mode in ("naive", "agent"):
                for name in names:  # a backlog: every segment waits, as with archiving off
                    (status / f"{name}.done").unlink(missing_ok=True)
                    (status / f"{name}.ready").touch()
                elapsed = _timed(archive[mode], pgdata, done=names)
                results[mode] = (elapsed, _timed(restore[mode], pgdata))
            stored = s3.list_objects_v2(Bucket=BUCKET, Prefix="bench/agent/")["Contents"]
            ratio = SEGMENT * len(stored) / sum(o["Size"] for o in stored)

            print(
                f"{n} segments of 16 MiB archived one after another, {r} restored; moto on "
                f"127.0.0.1, {os.cpu_count()} CPUs; compression {ratio:.1f}:1"
            )
            print(f"{'':34}{'segments/s':>12}{'restore ms/call':>18}")
            labels = {
                "naive": "python3 process per segment",
                "agent": "curl -> lifeboat-wal-agent",
            }
            for mode in ("naive", "agent"):
                a, b = results[mode]
                print(f"{labels[mode]:34}{n / a:12.1f}{1000 * b / r:18.0f}")
            speedup = results["naive"][0] / results["agent"][0]
            print(f"archive speed-up: {speedup:.1f}x")
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(timeout=30)
            moto.terminate()
            moto.wait(timeout=30)


if __name__ == "__main__":
    main()
