"""DigitalOcean Spaces through boto3 (buckets are made through the S3 API, not the DO API).

The stack's bucket keeps versions: a deleted or overwritten object (a mistake, or keys
taken from a droplet) stays as a noncurrent version for `keep_deleted_days` and can be
brought back (`undelete`); a lifecycle rule expires it after that, so retention's deletes
still free the space."""

from __future__ import annotations

import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import SpacesCredentials

# Abort multipart uploads a crashed backup left behind: Spaces bills their parts forever.
ABORT_MULTIPART_DAYS = 1


def s3_client(creds: SpacesCredentials, **config_overrides: Any):  # noqa: ANN201 - dynamic
    """An S3 client set up as Spaces needs it (`config_overrides` go to botocore's Config)."""
    settings = {
        "s3": {"addressing_style": "path"},
        # boto3 1.36+ checksum headers are rejected by several S3-compatible stores.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"mode": "standard", "max_attempts": 3},
    } | config_overrides
    config = Config(**settings)
    return boto3.client(
        "s3",
        endpoint_url=creds.endpoint,
        region_name=creds.region,
        aws_access_key_id=creds.access_key.get_secret_value(),
        aws_secret_access_key=creds.secret_key.get_secret_value(),
        verify=creds.ca_bundle or True,
        config=config,
    )


def _rules(keep_deleted_days: int) -> list[dict]:
    return [
        {
            "ID": "abort-incomplete-multipart",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
        },
        {
            "ID": "expire-noncurrent-versions",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": keep_deleted_days},
        },
    ]


def _rule_set(rules: list[dict]) -> dict[str, dict]:
    """Rules by ID, for comparing: only what Lifeboat sets (stores add their own keys)."""
    keys = ("Status", "AbortIncompleteMultipartUpload", "NoncurrentVersionExpiration")
    return {r.get("ID", ""): {k: r.get(k) for k in keys} for r in rules}


def list_keys(s3: Any, bucket: str, prefix: str) -> dict[str, int]:  # noqa: ANN401
    """key -> size of every object under prefix."""
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


MISSING = ("404", "NoSuchBucket", "NotFound")  # what S3 stores answer for "no such bucket"


def stored(s3: Any, bucket: str, prefix: str) -> str:  # noqa: ANN401
    """What the bucket holds under `prefix`, as a line ("s3://b/p: N objects, M MB"); a
    bucket that does not exist is said so."""
    try:
        keys = list_keys(s3, bucket, prefix)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in MISSING:
            raise
        return f"s3://{bucket}/: no such bucket"
    return f"s3://{bucket}/{prefix}: {len(keys)} objects, {sum(keys.values()) / 1e6:.1f} MB"


def ensure_bucket(s3: Any, bucket: str, keep_deleted_days: int = 7) -> str:  # noqa: ANN401
    """The bucket, versioned, with Lifeboat's lifecycle rules (other rules kept).
    Returns "created", "updated" or "unchanged"."""
    outcome = "unchanged"
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in MISSING:
            raise RuntimeError(
                f"Spaces bucket {bucket}: {exc.response['Error']['Code']} (is it another "
                "account's? bucket names are global: set backup.bucket in the spec)"
            ) from None
        s3.create_bucket(Bucket=bucket)
        outcome = "created"
    if s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        outcome = "updated" if outcome == "unchanged" else outcome
    try:
        current = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError:
        current = []
    wanted = _rules(keep_deleted_days)
    have = _rule_set(current)
    if any(have.get(r["ID"]) != _rule_set([r])[r["ID"]] for r in wanted):
        ours = {r["ID"] for r in wanted}
        others = [r for r in current if r.get("ID") not in ours]
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [*others, *wanted]}
        )
        outcome = "updated" if outcome == "unchanged" else outcome
    return outcome


def deleted_since(markers: list[dict], since: datetime.datetime) -> list[dict]:
    """Of `list_object_versions`' DeleteMarkers: those that are the latest version of
    their key and were made at or after `since`, to the second (listings may give whole
    seconds) ({"Key", "VersionId"})."""
    start = since.replace(microsecond=0)
    return [
        {"Key": m["Key"], "VersionId": m["VersionId"]}
        for m in markers
        if m.get("IsLatest") and m["LastModified"] >= start
    ]


def undelete(s3: Any, bucket: str, prefix: str, since: datetime.datetime) -> list[str]:  # noqa: ANN401
    """Objects under `prefix` deleted at or after `since` brought back: their delete
    markers removed, so the version before each is current again. Returns the keys."""
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    markers = deleted_since([m for page in pages for m in page.get("DeleteMarkers", [])], since)
    for marker in markers:
        s3.delete_object(Bucket=bucket, Key=marker["Key"], VersionId=marker["VersionId"])
    return sorted(m["Key"] for m in markers)


@task(name="bucket", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def bucket(s3: Any, name: str, keep_deleted_days: int = 7) -> str:  # noqa: ANN401
    """The stack's bucket exists, versioned, with its lifecycle rules: created, updated or
    unchanged."""
    return ensure_bucket(s3, name, keep_deleted_days)


@task(name="undelete", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def undelete_task(s3: Any, bucket: str, prefix: str, since: datetime.datetime) -> list[str]:  # noqa: ANN401
    """`undelete` as a task (a rerun finds nothing more to bring back)."""
    return undelete(s3, bucket, prefix, since)
