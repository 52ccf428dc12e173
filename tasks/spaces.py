"""DigitalOcean Spaces through boto3 (buckets are made through the S3 API, not the DO API)."""

from __future__ import annotations

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


def ensure_bucket(s3: Any, bucket: str) -> str:  # noqa: ANN401 - a boto3 S3 client
    outcome = "unchanged"
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise RuntimeError(
                f"Spaces bucket {bucket}: {exc.response['Error']['Code']} (is it another "
                "account's? bucket names are global: set backup.bucket in the spec)"
            ) from None
        s3.create_bucket(Bucket=bucket)
        outcome = "created"
    rule = {
        "ID": "abort-incomplete-multipart",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
    }
    try:
        current = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError:
        current = []
    if not any(
        r.get("ID") == rule["ID"]
        and r.get("AbortIncompleteMultipartUpload") == rule["AbortIncompleteMultipartUpload"]
        for r in current
    ):
        others = [r for r in current if r.get("ID") != rule["ID"]]
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [*others, rule]}
        )
        outcome = "updated" if outcome == "unchanged" else outcome
    return outcome


@task(name="bucket", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def bucket(s3: Any, name: str) -> str:  # noqa: ANN401 - a boto3 S3 client
    """The stack's bucket exists, with its lifecycle rule: created, updated or unchanged."""
    return ensure_bucket(s3, name)
