"""Backups in the local cloud, on the session's example stacks: `up` took the first backup;
a backup under write load lands with its manifest while a second one is refused; an S3
outage leaves WAL waiting on the primary and the archive catches up with no gap; the
archive command's duplicate rules on a real droplet; a cut-off upload is never cataloged;
retention deletes exactly what it should; a deleted backup comes back from the bucket's
versions."""

from __future__ import annotations

import datetime
import hashlib
import shlex
import threading
import time

import pytest

from blocks.credentials import SpacesCredentials
from blocks.stack import StackSpec
from flows.backup import BackupRefused, backup, backup_health
from flows.recover import recover_undelete
from flows.status import stack_status
from lab import faults
from lifeboat.waiting import NotYet
from tasks import backup as bk
from tasks import catalog, layout, restore, wal
from tasks import context as rm
from tasks.hosts import run
from tasks.spaces import s3_client
from tests.e2e.conftest import EXAMPLES, cluster_members, leader, stack, wait_for

pytestmark = pytest.mark.e2e
PSQL = "runuser -u postgres -- psql -XAtq -h /var/run/postgresql"


def _s3(credentials: str):  # noqa: ANN202 - boto3 client
    return s3_client(SpacesCredentials.load(credentials))


def _on_leader(spec: StackSpec, credentials: str, command: str, **kwargs) -> str:  # noqa: ANN003
    hosts, remote = rm.load(spec, credentials)
    lead = leader(cluster_members(spec, credentials))
    with remote.connect(next(h for h in hosts if h.name == lead.name)) as conn:
        return run(conn, command, **kwargs).stdout.strip()


def _load(spec: StackSpec, credentials: str, seconds: int) -> None:
    """pgbench writing on the primary in the background for `seconds`."""
    _on_leader(
        spec,
        credentials,
        f"{PSQL} -c 'SELECT 1' >/dev/null && "
        "(runuser -u postgres -- pgbench -h /var/run/postgresql -i -s 5 -q postgres "
        ">/tmp/pgbench-init.log 2>&1; "
        f"nohup runuser -u postgres -- pgbench -h /var/run/postgresql -c 2 -T {seconds} "
        "postgres >/tmp/pgbench.log 2>&1 &)",
        timeout=300,
    )


def _current_segment(spec: StackSpec, credentials: str) -> str:
    """Closes the current segment on the primary and waits until it is archived."""
    hosts, remote = rm.load(spec, credentials)
    lead = leader(cluster_members(spec, credentials))
    with remote.connect(next(h for h in hosts if h.name == lead.name)) as conn:
        return wal.verify_archiving(conn, timeout=300)


@pytest.mark.parametrize("name", EXAMPLES)
def test_up_took_the_first_backup(stacks, lab_blocks, name):
    spec, result = stack(stacks, name)
    first = result["backup"]
    entries, problems = bk.read_catalog(_s3(lab_blocks), spec.bucket, spec.name)
    assert problems == []
    assert first["id"] in [e.backup.id for e in entries]
    manifest = next(e.manifest for e in entries if e.backup.id == first["id"])
    for field in (
        "system_identifier",
        "pg_version_num",
        "timeline",
        "start_lsn",
        "stop_lsn",
        "started_at",
        "stopped_at",
        "wal_start",
        "wal_stop",
        "stored_bytes",
    ):
        assert manifest[field], field
    assert manifest["source_in_recovery"] is True  # a healthy replica was there
    (obj,) = manifest["objects"]
    body = _s3(lab_blocks).get_object(Bucket=spec.bucket, Key=obj["key"])["Body"].read()
    assert len(body) == obj["bytes"] and hashlib.sha256(body).hexdigest() == obj["sha256"]
    # A rerun of `up` (test_up) took no second backup of the same cluster.
    system = manifest["system_identifier"]
    assert len([e for e in entries if e.backup.system_id == system]) == 1


def test_backup_under_load_lands_and_a_second_is_refused(stacks, lab_blocks):
    spec, _ = stack(stacks, "compact")
    _load(spec, lab_blocks, 60)
    before = {e.backup.id for e in bk.read_catalog(_s3(lab_blocks), spec.bucket, spec.name)[0]}
    results: dict = {}
    worker = threading.Thread(target=lambda: results.update(report=backup(spec, lab_blocks)))
    worker.start()
    try:
        from prefect.client.orchestration import get_client

        def running() -> bool:
            with get_client(sync_client=True) as client:
                try:
                    limit = client.read_global_concurrency_limit_by_name(
                        f"lifeboat-backup-{spec.name}"
                    )
                except Exception:  # noqa: BLE001 - not created yet
                    return False
            return limit.active_slots > 0

        wait_for("the first backup to hold the stack's slot", running, timeout=120)
        with pytest.raises(BackupRefused, match="another backup of stack .* is running"):
            backup(spec, lab_blocks)
    finally:
        worker.join(timeout=600)
    report = results["report"]
    assert "healthy replica" in report["source"]
    assert "no gap" in report["wal_verified"]
    entries, problems = bk.read_catalog(_s3(lab_blocks), spec.bucket, spec.name)
    assert problems == [] and report["id"] in {e.backup.id for e in entries} - before
    manifest = next(e.manifest for e in entries if e.backup.id == report["id"])
    assert manifest["raw_bytes"] > 50e6  # pgbench's tables are in it
    # Watching it: status and the health check see the archiver and the new backup.
    status = stack_status(spec, lab_blocks)
    assert status["backups"]["newest"] == report["id"]
    archivers = [d["archiver"] for d in status["droplets"] if "archiver" in d]
    primary = [a for a in archivers if not a["in_recovery"]]
    assert len(primary) == 1 and primary[0]["failed_count"] == 0
    health = backup_health(spec, lab_blocks)
    assert health["problems"] == [] and health["newest_backup"] == report["id"]


def test_s3_outage_leaves_wal_waiting_then_the_archive_catches_up(stacks, lab_blocks):
    spec, _ = stack(stacks, "compact")
    newest = bk.read_catalog(_s3(lab_blocks), spec.bucket, spec.name)[0][-1].manifest
    _load(spec, lab_blocks, 150)
    count = "SELECT count(*) FROM pgbench_history"
    faults.s3_outage()
    began = time.monotonic()
    try:
        # Until WAL waits on the primary and its last archive is older than the limit
        # below (with a margin for an archive that was in flight when S3 went).
        def waiting() -> int:
            ready = _on_leader(
                spec,
                lab_blocks,
                f"ls $({PSQL} -c 'SHOW data_directory')/pg_wal/archive_status"
                " | grep -c ready || true",
            )
            if int(ready) < 2 or time.monotonic() - began < 45:
                raise NotYet(f"{ready} segments waiting after {time.monotonic() - began:.0f} s")
            return int(ready)

        wait_for("WAL waiting on the primary during the outage", waiting, timeout=150, every=5)
        with pytest.raises(bk.BackupError, match="archive lags"):
            backup_health(spec, lab_blocks, max_archive_age=30)
    finally:
        faults.s3_restore()
    rows_at_restore = int(_on_leader(spec, lab_blocks, f'{PSQL} -c "{count}"'))
    last = _current_segment(spec, lab_blocks)  # waits for the backlog to drain to here
    needed, missing = bk.wal_gaps(_s3(lab_blocks), spec.bucket, spec.name, newest, last)
    assert missing == [] and len(needed) > 5
    rows = int(_on_leader(spec, lab_blocks, f'{PSQL} -c "{count}"'))
    assert rows >= rows_at_restore > 0  # the writes of the outage are all there
    health = backup_health(spec, lab_blocks)
    assert health["archiver"]["failed_count"] > 0  # it did fail during the outage...
    assert health["problems"] == []  # ...and is healthy again


def test_archiving_a_stored_segment_again(stacks, lab_blocks):
    """On the primary's droplet: the same segment again exits 0; other contents under
    that name exit non-zero, say why, and leave the stored object alone."""
    spec, _ = stack(stacks, "compact")
    last = _current_segment(spec, lab_blocks)
    s3 = _s3(lab_blocks)
    system = _on_leader(
        spec, lab_blocks, f'{PSQL} -c "SELECT system_identifier FROM pg_control_system()"'
    )
    key = f"{spec.name}/{system}/wal/{last}.zst"
    before = s3.head_object(Bucket=spec.bucket, Key=key)
    data_dir = f"$({PSQL} -c 'SHOW data_directory')"
    script = (
        f"cd {data_dir} && "
        f"runuser -u postgres -- /usr/local/lib/lifeboat/wal-archive pg_wal/{last} {last}; "
        "echo rc=$?; "
        f"runuser -u postgres -- sh -c 'head -c 16777216 /dev/urandom > pg_wal/lifeboat-e2e' && "
        f"runuser -u postgres -- /usr/local/lib/lifeboat/wal-archive pg_wal/lifeboat-e2e {last}; "
        "echo rc=$?; rm -f pg_wal/lifeboat-e2e"
    )
    hosts, remote = rm.load(spec, lab_blocks)
    lead = leader(cluster_members(spec, lab_blocks))
    with remote.connect(next(h for h in hosts if h.name == lead.name)) as conn:
        res = run(conn, f"bash -c {shlex.quote(script)}", warn=True, timeout=120)
    codes = [line for line in res.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=0", "rc=1"], (res.stdout, res.stderr)
    assert "different contents" in res.stderr
    after = s3.head_object(Bucket=spec.bucket, Key=key)
    assert after["ETag"] == before["ETag"] and after["Metadata"] == before["Metadata"]


def test_a_cut_off_upload_is_never_cataloged(stacks, lab_blocks):
    spec, _ = stack(stacks, "compact")
    s3 = _s3(lab_blocks)
    ids_before = {e.backup.id for e in bk.read_catalog(s3, spec.bucket, spec.name)[0]}
    hosts, remote = rm.load(spec, lab_blocks)
    members = cluster_members(spec, lab_blocks)
    source = next(h for h in hosts if h.name == bk.choose_source(members)[0])
    with remote.connect(source) as conn:
        run(
            conn,
            f"nohup runuser -u postgres -- /usr/bin/python3 {bk.PROGRAM} take --id cutoff "
            f"--max-rate 4M >/tmp/cutoff.log 2>&1 &",  # slow on purpose: killed midway
        )

    def uploading() -> list:
        pages = s3.list_multipart_uploads(Bucket=spec.bucket, Prefix=f"{spec.name}/")
        return [u for u in pages.get("Uploads", []) if "/backups/cutoff/" in u["Key"]]

    wait_for("the cut-off backup's multipart upload", uploading, timeout=60)
    time.sleep(5)  # midway: at 4 MB/s pg_basebackup needs ~30 s for pgbench's tables
    with remote.connect(source) as conn:
        run(
            conn,
            "pkill -KILL -f 'basebackup.py take --id cutoff'; pkill -KILL pg_basebackup",
            warn=True,
        )
    entries, problems = bk.read_catalog(s3, spec.bucket, spec.name)
    assert {e.backup.id for e in entries} == ids_before and problems == []
    keys = bk.list_keys(s3, spec.bucket, f"{spec.name}/")
    assert not [k for k in keys if "/backups/cutoff/" in k]  # nothing visible at all
    # A backup whose object landed but whose manifest never did (the run died between)
    # is not cataloged either.
    orphan = f"{spec.name}/{entries[-1].backup.system_id}/backups/orphan/base.tar.zst"
    s3.put_object(Bucket=spec.bucket, Key=orphan, Body=b"data without a manifest")
    assert {e.backup.id for e in bk.read_catalog(s3, spec.bucket, spec.name)[0]} == ids_before
    # The next backup clears both leftovers.
    report = backup(spec, lab_blocks)
    assert report["leftovers_removed"] >= 2
    assert uploading() == []
    assert orphan not in bk.list_keys(s3, spec.bucket, f"{spec.name}/")


def test_retention_deletes_exactly_what_it_should(stacks, lab_blocks):
    """Several backups (one more taken here); keep the newest two as if every one were
    three days old with a one-day window: the older ones and the WAL only they needed go,
    nothing else; the archive still has every segment from the oldest kept backup on."""
    spec, _ = stack(stacks, "compact")
    backup(spec, lab_blocks)
    s3 = _s3(lab_blocks)
    entries, _ = bk.read_catalog(s3, spec.bucket, spec.name)
    assert len(entries) >= 4
    kept, expired = entries[-2:], entries[:-2]
    keys_before = bk.list_keys(s3, spec.bucket, f"{spec.name}/")
    oldest_kept = min(e.backup.start_segno for e in kept)
    expected = {k for e in expired for k in e.backup.keys}
    for system, names in bk.wal_names(keys_before, spec.name).items():
        for name in names:
            parsed = catalog.parse_segment(name, kept[0].backup.segment_size)
            if parsed and parsed[1] < oldest_kept and system == kept[0].backup.system_id:
                expected.add(f"{spec.name}/{system}/wal/{name}.zst")
    assert any("/wal/" in k for k in expected)  # the test deletes some WAL too

    result = bk.apply_retention(
        s3, spec.bucket, spec.name, keep_count=2, keep_days=1, now=time.time() + 3 * 86400
    )
    keys_after = bk.list_keys(s3, spec.bucket, f"{spec.name}/")
    assert set(keys_before) - set(keys_after) == expected
    assert result["kept"] == [e.backup.id for e in reversed(kept)]
    assert sorted(result["expired"]) == sorted(e.backup.id for e in expired)
    remaining, problems = bk.read_catalog(s3, spec.bucket, spec.name)
    assert [e.backup.id for e in remaining] == [e.backup.id for e in kept] and problems == []
    last = _current_segment(spec, lab_blocks)
    for entry in kept:
        assert bk.wal_gaps(s3, spec.bucket, spec.name, entry.manifest, last)[1] == []


def test_the_newest_backup_restores_with_the_latest_archived_writes(stacks, lab_blocks):
    """An untested backup is not a backup: the newest one, restored beside a replica's
    server and replayed to the end of the archive, accepts writes and holds a row written
    on the primary after the backup (and archived since)."""
    spec, _ = stack(stacks, "compact")
    marker = f"marker-{time.time_ns()}"
    _on_leader(
        spec,
        lab_blocks,
        f"{PSQL} -c 'CREATE TABLE IF NOT EXISTS restore_marker (k text)'"
        f" -c \"INSERT INTO restore_marker VALUES ('{marker}')\"",
    )
    _current_segment(spec, lab_blocks)  # the segment holding the marker is archived
    newest = bk.read_catalog(_s3(lab_blocks), spec.bucket, spec.name)[0][-1].manifest
    (obj,) = newest["objects"]
    hosts, remote = rm.load(spec, lab_blocks)
    source = next(
        h for h in hosts if h.name == bk.choose_source(cluster_members(spec, lab_blocks))[0]
    )
    scratch = restore.Scratch("e2e", 5499)
    with remote.connect(source) as conn:
        restore.cleanup(conn, scratch)
        try:
            timings = restore.restore(conn, scratch, obj["key"], obj["sha256"], timeout=600)
            rows = run(
                conn,
                f"runuser -u postgres -- psql -XAtq -h {scratch.socket_dir} -p {scratch.port} "
                "-c 'SELECT k FROM restore_marker'",
            ).stdout.split()
        finally:
            restore.cleanup(conn, scratch)
    assert marker in rows
    assert timings.bytes == obj["bytes"]


def test_an_unreadable_manifest_is_skipped_by_backups_and_named_by_backup_health(
    stacks, lab_blocks
):
    """One bad manifest stops neither a backup nor retention; backup-health fails naming
    it. Removed afterwards."""
    spec, _ = stack(stacks, "compact")
    s3 = _s3(lab_blocks)
    entries, _ = bk.read_catalog(s3, spec.bucket, spec.name)
    system_id = entries[-1].backup.system_id
    bad = layout.manifest_key(spec.name, system_id, "20000101T000000Z")
    s3.put_object(Bucket=spec.bucket, Key=bad, Body=b"{not json")
    try:
        assert backup(spec, lab_blocks)["id"]  # backup and retention go on
        with pytest.raises(bk.BackupError, match=f"manifest {bad} is unreadable"):
            backup_health(spec, lab_blocks)
    finally:
        s3.delete_object(Bucket=spec.bucket, Key=bad)
    assert backup_health(spec, lab_blocks)["problems"] == []


def test_a_deleted_backup_comes_back_from_the_buckets_versions(stacks, lab_blocks):
    """Someone deletes the newest backup (a mistake, or the Spaces keys taken from a
    droplet): the bucket kept versions, and `recover undelete --since` makes it whole."""
    spec, _ = stack(stacks, "compact")
    s3 = _s3(lab_blocks)
    assert s3.get_bucket_versioning(Bucket=spec.bucket)["Status"] == "Enabled"
    newest = bk.read_catalog(s3, spec.bucket, spec.name)[0][-1].backup
    since = datetime.datetime.now(datetime.UTC)
    bk.delete_keys(s3, spec.bucket, [newest.keys[-1], *newest.keys[:-1]])
    assert newest.id not in [e.backup.id for e in bk.read_catalog(s3, spec.bucket, spec.name)[0]]

    result = recover_undelete(spec, lab_blocks, since)

    assert sorted(result["keys"]) == sorted(newest.keys), result
    entries, problems = bk.read_catalog(s3, spec.bucket, spec.name)
    assert newest.id in [e.backup.id for e in entries] and problems == []
    assert backup_health(spec, lab_blocks)["problems"] == []


def test_a_hole_in_the_archive_fails_backup_health_naming_it_and_the_backups_it_cuts(
    stacks, lab_blocks
):
    """A segment every kept backup needs is taken out of the archive (and put back)."""
    spec, _ = stack(stacks, "compact")
    _current_segment(spec, lab_blocks)
    s3 = _s3(lab_blocks)
    entries, _ = bk.read_catalog(s3, spec.bucket, spec.name)
    newest = entries[-1]
    key = layout.wal_key(spec.name, newest.backup.system_id, newest.manifest["wal_start"])
    body = s3.get_object(Bucket=spec.bucket, Key=key)
    s3.delete_object(Bucket=spec.bucket, Key=key)
    try:
        with pytest.raises(bk.BackupError, match="archive hole: WAL") as failed:
            backup_health(spec, lab_blocks)
        assert newest.manifest["wal_start"] in str(failed.value)
        assert newest.backup.id in str(failed.value)
    finally:
        s3.put_object(
            Bucket=spec.bucket, Key=key, Body=body["Body"].read(), Metadata=body["Metadata"]
        )
    assert backup_health(spec, lab_blocks)["problems"] == []
