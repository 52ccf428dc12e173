"""The restore drill against the local cloud: it passes on each example with its marker
found, RPO and RTO reported, and every upload the site references in Spaces; an upload
gone from the bucket fails it naming the file; a backup object changed in place (same
size, other bytes) fails it naming the object; a bad backup id is refused before anything
is created; and the scratch droplet is gone after a success, a failure and a killed run."""

from __future__ import annotations

import re

import pytest

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials
from flows.drill import DrillFailed, restore_drill
from lifeboat.waiting import NotYet, wait_until
from tasks import backup as bk
from tasks import droplets, layout, scratch
from tasks.spaces import list_keys, s3_client
from tests.e2e.conftest import EXAMPLES, stack
from tests.e2e.test_site import upload

pytestmark = pytest.mark.e2e


def _do(credentials: str):  # noqa: ANN202 - pydo client
    return droplets.api(DigitalOceanCredentials.load(credentials))


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_drill_restores_the_newest_backup_and_proves_it(stacks, lab_blocks, name):
    """On compact, a killed drill's scratch droplet is left in place first: the drill
    removes it before it starts its own (one drill run serves both checks)."""
    spec, _ = stack(stacks, name)
    upload(spec, lab_blocks, spec.nodes_with("wordpress")[0].name)
    do = _do(lab_blocks)
    if name == "compact":
        left = _leave_a_scratch_droplet(spec, lab_blocks)
        assert [d["id"] for d in scratch.droplets(do, spec)] == [left]
    report = restore_drill(spec, lab_blocks)
    assert report["ok"] and report["rpo_s"] == 0.0
    assert report["checks"]["marker"] == "found"
    assert report["checks"]["probe post"] == "found"
    assert "rows as with the marker" in report["checks"]["site tables"]
    assert report["checks"]["pg_amcheck"].startswith("no corruption")
    assert report["checks"]["checksums"] == "data_checksums on, 0 failures"
    assert re.fullmatch(r"[1-9]\d* uploads referenced, all in Spaces", report["checks"]["media"])
    assert 0 < report["rto_s"] <= report["total_s"]
    assert report["bytes"] > 0
    assert scratch.droplets(do, spec) == []


def _leave_a_scratch_droplet(spec, credentials: str) -> int:  # noqa: ANN001
    """What a drill killed after creating its scratch droplet leaves: the droplet's id."""
    from tasks.context import StackContext

    ctx = StackContext.open(spec, credentials)
    try:
        return scratch.create(_do(credentials), spec, ctx.public_key).droplet_id
    finally:
        ctx.close()


def test_a_bad_backup_id_is_refused_before_anything_is_created(stacks, lab_blocks):
    spec, _ = stack(stacks, "compact")
    with pytest.raises(DrillFailed, match="no backup '19990101T000000Z' in the catalog"):
        restore_drill(spec, lab_blocks, "19990101T000000Z")
    assert scratch.droplets(_do(lab_blocks), spec) == []


def test_a_backup_changed_in_place_fails_the_drill_naming_it(stacks, lab_blocks):
    """Same size, other bytes: only the manifest's SHA-256 can tell. The object is put
    back afterwards, so the stack's backups stay whole for the other tests."""
    spec, _ = stack(stacks, "compact")
    s3 = s3_client(SpacesCredentials.load(lab_blocks))
    (obj,) = bk.read_catalog(s3, spec.bucket, spec.name)[0][-1].manifest["objects"]
    original = s3.get_object(Bucket=spec.bucket, Key=obj["key"])["Body"].read()
    middle = len(original) // 2
    changed = original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :]
    s3.put_object(Bucket=spec.bucket, Key=obj["key"], Body=changed)
    try:
        with pytest.raises(Exception, match=obj["key"].rsplit("/", 1)[-1]) as failed:
            restore_drill(spec, lab_blocks)
        assert "sha" in str(failed.value).lower()
    finally:
        s3.put_object(Bucket=spec.bucket, Key=obj["key"], Body=original)
    assert scratch.droplets(_do(lab_blocks), spec) == []


def test_an_upload_missing_from_spaces_fails_the_drill_naming_it(stacks, lab_blocks):
    """The site references an upload whose object is gone from the bucket (deleted: a
    delete marker over its versions): a site restored from the backups would show it
    broken, so the drill fails naming it. The delete marker is removed afterwards."""
    spec, _ = stack(stacks, "compact")
    path, _ = upload(spec, lab_blocks, spec.nodes_with("wordpress")[0].name)
    relative = path.split("/wp-content/uploads/", 1)[1]
    key = layout.media_key(spec.name, relative)
    s3 = s3_client(SpacesCredentials.load(lab_blocks))

    def stored() -> bool:
        if key not in list_keys(s3, spec.bucket, key):
            raise NotYet(f"{key} not in the bucket yet")
        return True

    wait_until("the upload in Spaces (the media agent pushes it)", stored, 60)
    marker = s3.delete_object(Bucket=spec.bucket, Key=key)["VersionId"]
    try:
        with pytest.raises(DrillFailed, match=re.escape(relative)):
            restore_drill(spec, lab_blocks)
    finally:
        s3.delete_object(Bucket=spec.bucket, Key=key, VersionId=marker)
    assert s3.head_object(Bucket=spec.bucket, Key=key)["ContentLength"] > 0
    assert scratch.droplets(_do(lab_blocks), spec) == []


def test_an_s3_outage_during_replay_fails_the_drill(stacks, lab_blocks, monkeypatch):
    """Spaces stops answering once the base backup is in place, just as replay starts: the
    WAL agent cannot deliver the next segment, PostgreSQL aborts recovery (wal-restore
    --strict) and the drill fails, instead of promoting a partial restore."""
    from lab import faults
    from tasks import restore

    spec, _ = stack(stacks, "compact")
    start = restore.start

    def start_in_an_outage(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        faults.s3_outage()
        return start(*args, **kwargs)

    monkeypatch.setattr(restore, "start", start_in_an_outage)
    try:
        with pytest.raises(Exception, match="scratch server drill .* stopped") as failed:
            restore_drill(spec, lab_blocks)
    finally:
        faults.s3_restore()
    assert "wal-restore" in str(failed.value) or "restore_command" in str(failed.value)
    assert scratch.droplets(_do(lab_blocks), spec) == []


def _marker_on_leader(spec, credentials: str) -> str:  # noqa: ANN001
    from tasks import context as rm
    from tasks import drill, wal

    hosts, remote = rm.load(spec, credentials)
    with remote.connect(bk.leader_host(remote, hosts)) as conn:
        marker = drill.write_marker(conn, spec.wordpress.db_name, [])
        wal.verify_archiving(conn)
    return marker.token


def test_a_point_in_time_drill_holds_the_marker_before_and_not_the_one_after(stacks, lab_blocks):
    import datetime as dt
    import time

    spec, _ = stack(stacks, "compact")
    before = _marker_on_leader(spec, lab_blocks)
    time.sleep(1.5)
    target = dt.datetime.now(dt.UTC)
    time.sleep(1.5)
    after = _marker_on_leader(spec, lab_blocks)
    report = restore_drill(spec, lab_blocks, None, target)
    assert report["ok"] and report["checks"]["marker"] == "absent, as it should be"
    assert before in report["markers_restored"]
    assert after not in report["markers_restored"]
    assert report["replay"].startswith(f"to target {target:%Y-%m-%dT%H:%M:%S}Z, promoted")
    assert scratch.droplets(_do(lab_blocks), spec) == []


def test_unreachable_target_times_are_refused_before_anything_is_created(stacks, lab_blocks):
    import datetime as dt

    spec, _ = stack(stacks, "compact")
    now = dt.datetime.now(dt.UTC)
    for when, why in (
        (now + dt.timedelta(hours=1), "in the future"),
        (now - dt.timedelta(days=3650), "before the oldest kept backup finished"),
    ):
        with pytest.raises(DrillFailed, match=f"{why}; possible times are .* nothing was created"):
            restore_drill(spec, lab_blocks, None, when)
    assert scratch.droplets(_do(lab_blocks), spec) == []
