"""What `lifeboat destroy` reports of a stack's objects in Spaces (tasks/spaces.stored),
against a real S3 server (moto): the count and size under the prefix, and a bucket that
does not exist said as such instead of failing a destroy that already ran."""

from __future__ import annotations

from tasks import spaces
from tests.integration import test_wal_agent as wal_tests
from tests.integration.test_wal_agent import BUCKET, Moto

moto = wal_tests.moto


def test_stored_counts_the_prefix_and_names_a_missing_bucket(moto: Moto) -> None:
    s3 = moto.client
    s3.put_object(Bucket=BUCKET, Key="listing-a/1", Body=b"x" * 1_500_000)
    s3.put_object(Bucket=BUCKET, Key="listing-a/2", Body=b"y")
    s3.put_object(Bucket=BUCKET, Key="listing-b/1", Body=b"z")  # another stack's
    assert spaces.stored(s3, BUCKET, "listing-a/") == (
        f"s3://{BUCKET}/listing-a/: 2 objects, 1.5 MB"
    )
    assert spaces.stored(s3, "lifeboat-nosuch", "a/") == "s3://lifeboat-nosuch/: no such bucket"
