"""Spaces: real moto behind a real HAProxy TLS terminator, on loopback, in a private lab dir.

Everything runs on 127.0.0.1 with free ports and a temporary STATE_DIR/CACHE_DIR, so a lab
that is up on this machine is not touched.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from blocks.credentials import SpacesCredentials
from lab import config, loadbalancers, processes, spaces
from tasks.spaces import ensure_bucket, s3_client, undelete

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not Path(loadbalancers.HAPROXY).exists(), reason="needs haproxy"),
]

BUCKET = "lab-backups"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orchestrator_s3(info: dict[str, Any], **config_overrides: Any) -> Any:
    """The orchestrator's Spaces client (tasks.spaces) for the lab's endpoint and keys: the
    client the runbooks use must work against the lab's Spaces."""
    creds = SpacesCredentials(
        access_key=info["access_key"],
        secret_key=info["secret_key"],
        region=info["region"],
        endpoint=info["endpoint"],
        ca_bundle=str(info["ca_cert"]),
    )
    return s3_client(creds, **config_overrides)


def _lab_pids() -> list[int]:
    return processes.find_pids([str(config.STATE_DIR)])


@pytest.fixture(scope="module")
def lab() -> Iterator[Path]:
    # Short path: HAProxy's admin socket lives under RUN_DIR (unix paths max 107 bytes).
    base = Path(tempfile.mkdtemp(prefix="lbspaces-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "STATE_DIR", base / "state")
        mp.setattr(config, "RUN_DIR", base / "state" / "run")
        mp.setattr(config, "CACHE_DIR", base / "cache")
        mp.setattr(config, "MOTO_PORT", _free_port())
        mp.setattr(config, "SPACES_PORT", _free_port())
        try:
            yield base
        finally:
            spaces.stop_stale()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def info(lab: Path) -> dict[str, Any]:
    return spaces.start("127.0.0.1")


def test_start_gives_an_https_endpoint_with_lab_credentials(info: dict[str, Any]) -> None:
    assert info["endpoint"] == f"https://127.0.0.1:{config.SPACES_PORT}"
    assert info["region"] == "nyc3"
    assert info["access_key"] and info["secret_key"]
    assert Path(info["ca_cert"]).is_file()
    creds = config.STATE_DIR / "spaces" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert spaces.is_up()


def test_objects_round_trip_over_https(info: dict[str, Any]) -> None:
    s3 = orchestrator_s3(info)
    s3.create_bucket(Bucket=BUCKET)  # no LocationConstraint, as Spaces allows
    s3.put_object(Bucket=BUCKET, Key="wal/000000010000000000000001", Body=b"x" * 70_000)
    got = s3.get_object(Bucket=BUCKET, Key="wal/000000010000000000000001")["Body"].read()
    assert got == b"x" * 70_000
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET]


def test_the_labs_own_client_reaches_it(info: dict[str, Any]) -> None:
    s3 = spaces.boto3_client(info)  # the lab's tools and the e2e tests use this one
    s3.put_object(Bucket=BUCKET, Key="lab-client", Body=b"y")
    assert s3.get_object(Bucket=BUCKET, Key="lab-client")["Body"].read() == b"y"
    s3.delete_object(Bucket=BUCKET, Key="lab-client")


def test_a_client_that_does_not_trust_the_lab_ca_fails(info: dict[str, Any]) -> None:
    untrusting = orchestrator_s3(info | {"ca_cert": Path(__file__)}, retries={"max_attempts": 1})
    with pytest.raises(botocore.exceptions.SSLError):
        untrusting.list_buckets()
    import boto3  # the system's trust store, not the lab's: must fail too

    system = boto3.client(
        "s3",
        endpoint_url=info["endpoint"],
        region_name="nyc3",
        aws_access_key_id=info["access_key"],
        aws_secret_access_key=info["secret_key"],
    )
    with pytest.raises(botocore.exceptions.SSLError):
        system.list_buckets()


def test_start_again_changes_nothing(info: dict[str, Any]) -> None:
    pids = sorted(_lab_pids())
    again = spaces.start("127.0.0.1")
    assert again == info
    assert sorted(_lab_pids()) == pids


def test_outage_fails_fast_and_restore_keeps_the_data(info: dict[str, Any]) -> None:
    s3 = orchestrator_s3(info, retries={"max_attempts": 1})
    s3.put_object(Bucket=BUCKET, Key="before-outage", Body=b"kept")
    spaces.outage()
    try:
        assert not spaces.is_up()
        started = time.monotonic()
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            s3.get_object(Bucket=BUCKET, Key="before-outage")
        assert time.monotonic() - started < 2
        spaces.outage()  # twice is fine
    finally:
        spaces.restore()
    assert spaces.is_up()
    assert s3.get_object(Bucket=BUCKET, Key="before-outage")["Body"].read() == b"kept"


def test_the_stack_bucket_keeps_versions_and_deleted_objects_come_back(
    info: dict[str, Any],
) -> None:
    """ensure_bucket turns versioning on with Lifeboat's lifecycle rules (a rerun changes
    nothing); undelete brings back what was deleted since a moment, and only that."""
    s3 = orchestrator_s3(info)
    bucket = "versioned-stack"
    assert ensure_bucket(s3, bucket, keep_deleted_days=3) == "created"
    assert ensure_bucket(s3, bucket, keep_deleted_days=3) == "unchanged"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 3
    }
    assert "abort-incomplete-multipart" in rules
    assert ensure_bucket(s3, bucket, keep_deleted_days=5) == "updated"

    s3.put_object(Bucket=bucket, Key="st/1/wal/old", Body=b"deleted long ago")
    s3.delete_object(Bucket=bucket, Key="st/1/wal/old")
    time.sleep(2.1)  # listings give whole seconds
    since = datetime.datetime.now(datetime.UTC)
    for key, body in (("st/1/backups/b1/base.tar.zst", b"base"), ("other/x", b"not ours")):
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        s3.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=bucket, Key="st/1/backups/b1/base.tar.zst")

    assert undelete(s3, bucket, "st/", since) == ["st/1/backups/b1/base.tar.zst"]
    got = s3.get_object(Bucket=bucket, Key="st/1/backups/b1/base.tar.zst")["Body"].read()
    assert got == b"base"
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert listed == ["st/1/backups/b1/base.tar.zst"]  # not the old one, not another prefix
    assert undelete(s3, bucket, "st/", since) == []  # a rerun finds nothing more


def test_stop_leaves_no_process(info: dict[str, Any]) -> None:
    assert _lab_pids()
    spaces.stop()
    assert _lab_pids() == []
    assert not spaces.is_up()
    spaces.stop()  # stopping a stopped Spaces is fine


def test_stop_stale_finds_processes_without_pid_files(lab: Path) -> None:
    spaces.start("127.0.0.1")
    assert spaces.is_up()
    for pid_file in config.RUN_DIR.glob("*.pid"):  # as if a killed run lost its records
        pid_file.unlink()
    assert len(_lab_pids()) == 2
    spaces.stop_stale()
    assert _lab_pids() == []
