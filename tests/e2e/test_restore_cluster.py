"""`recover restore-cluster` against the local cloud: "someone dropped the posts table at
14:02". A new stack is built whose cluster is the compact example's as it was at a time
between two markers, with streaming replicas, HAProxy, archiving under its own prefix,
the source's uploads and a site of its own; the source's archive is only read. A target
time that no backup can reach is refused before anything is created."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pydo
import pytest
from botocore.exceptions import ClientError

from blocks.stack import StackSpec
from flows.recover import recover_restore_cluster
from tasks import backup as bk
from tasks import context as rm
from tasks import drill, sql
from tasks.droplets import destroy_stack, inventory
from tasks.pitr import RestoreRefused
from tasks.spaces import list_keys
from tests.e2e.conftest import catalog, healthy_cluster, stack, wait_for
from tests.e2e.test_drill import _marker_on_leader
from tests.e2e.test_site import served_on, upload

pytestmark = pytest.mark.e2e


def restored_spec(source: StackSpec) -> StackSpec:
    """The smallest stack that still shows a replica joining: two database droplets
    (Patroni) and one web droplet (HAProxy, WordPress), etcd on all three."""
    data = source.model_dump()
    data.update(name=f"{source.name}-pitr", vpc_cidr="10.21.0.0/16")
    size = data["groups"][0]["size"]
    data["groups"] = [
        {"name": "db", "count": 2, "size": size, "roles": ["etcd", "postgres"]},
        {"name": "web", "count": 1, "size": size, "roles": ["etcd", "haproxy", "wordpress"]},
    ]
    return StackSpec.model_validate(data)


def _s3(credentials: str):  # noqa: ANN202 - a boto3 client
    from blocks.credentials import SpacesCredentials
    from tasks.spaces import s3_client

    return s3_client(SpacesCredentials.load(credentials))


def _clear(s3, bucket: str, prefix: str) -> None:  # noqa: ANN001
    try:
        bk.delete_keys(s3, bucket, list(list_keys(s3, bucket, prefix)))
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchBucket":
            raise


def _markers(spec: StackSpec, credentials: str) -> set[str]:
    hosts, remote = rm.load(spec, credentials)
    target = sql.Target(os_user="postgres", database=spec.wordpress.db_name)
    with remote.connect(bk.leader_host(remote, hosts)) as conn:
        out = sql.query(conn, f"SELECT token FROM {drill.TABLE}", target)
    return set(out.split())


def test_restore_cluster_to_a_time_between_two_markers(
    stacks: dict, lab_blocks: str, do: pydo.Client
) -> None:
    source, _ = stack(stacks, "compact")
    new = restored_spec(source)
    s3 = _s3(lab_blocks)
    destroy_stack(do, new)
    _clear(s3, new.bucket, f"{new.name}/")  # a rerun starts from an empty prefix too

    # Refused before anything is created: a time before any backup, one in the future.
    for when in (datetime(2020, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(hours=1)):
        with pytest.raises(RestoreRefused, match="possible times are"):
            recover_restore_cluster(new, lab_blocks, source.name, when)
    assert inventory(do, new) == []

    path, sha = upload(source, lab_blocks, source.nodes_with("wordpress")[0].name)
    before = _marker_on_leader(source, lab_blocks)
    time.sleep(1.5)
    target = datetime.now(UTC)
    time.sleep(1.5)
    after = _marker_on_leader(source, lab_blocks)  # its segment archived: past the target
    source_keys = set(list_keys(s3, source.bucket, f"{source.name}/"))

    try:
        result = recover_restore_cluster(new, lab_blocks, source.name, target)
        assert result["stop"].startswith("before "), result

        markers = _markers(new, lab_blocks)
        assert before in markers and after not in markers
        members = healthy_cluster(new, lab_blocks)
        assert len(members) == 2 and all(m.timeline == int(result["timeline"]) for m in members)

        # Archiving under the new prefix, the new timeline's history first; the source's
        # archive holds nothing of it.
        history = f"{int(result['timeline']):08X}.history"
        own = list_keys(s3, new.bucket, f"{new.name}/")
        assert any(k.endswith(f"/wal/{history}.zst") for k in own), sorted(own)[:20]
        added = set(list_keys(s3, source.bucket, f"{source.name}/")) - source_keys
        assert not [k for k in added if history in k], added
        assert [e.backup.id for e in catalog(new, lab_blocks)]  # the first backup

        # The upload came with the site: served by the new stack's web droplet.
        wait_for(
            "the upload served by the restored stack",
            lambda: set(served_on(new, lab_blocks, path).values()) == {("200", sha)},
            timeout=60,
        )
        assert result["media copied"] >= 1

        # A rerun finds it all done: nothing changes, no second backup.
        rerun = recover_restore_cluster(new, lab_blocks, source.name, target)
        assert rerun["cluster"] == "unchanged", rerun
        assert rerun["site"].startswith("unchanged"), rerun
        assert rerun["media copied"] == 0 and rerun["first backup"].startswith("none needed")
        assert rerun["timeline"] == result["timeline"]
    finally:
        destroy_stack(do, new)
