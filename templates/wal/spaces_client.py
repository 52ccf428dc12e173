"""The Spaces (S3) config file and client that Lifeboat's droplet programs share.

One TOML file per program (/etc/lifeboat/wal.conf for the WAL agent and base backups,
/etc/lifeboat/media.conf for the media agent on web droplets), all in this format:

  endpoint, region, bucket, prefix, access_key, secret_key   required
  ca_bundle        CA bundle for the endpoint's TLS certificate; "" = the system's CAs
  connect_timeout, read_timeout (seconds), max_attempts (per S3 call, first try included)

plus the keys of the program's own settings (a subclass of `Settings`). A key the program
does not know, or a missing required one, is refused, and so is a file anyone but its
owner could read: it holds the Spaces keys.

Placed beside the programs (/usr/local/lib/lifeboat/ on a droplet) and imported as the
sibling module `spaces_client`, like spaces_layout.py. Debian 12's python3.11, standard
library and python3-boto3 only.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = ["CreateOnly", "Settings", "client", "load"]


@dataclasses.dataclass(frozen=True)
class Settings:
    endpoint: str
    region: str
    bucket: str
    prefix: str
    access_key: str = dataclasses.field(repr=False)
    secret_key: str = dataclasses.field(repr=False)
    ca_bundle: str = ""  # "" = the system's CAs
    connect_timeout: float = 3
    read_timeout: float = 30
    max_attempts: int = 3  # per S3 call, first try included


S = TypeVar("S", bound=Settings)


def load(path: str, kind: type[S]) -> S:
    """The TOML config as `kind`; refused when anyone but its owner could read the keys."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise SystemExit(f"{path} holds the Spaces keys: make it mode 0600 (it is {mode:04o})")
    with open(path, "rb") as f:
        data = tomllib.load(f)
    fields = dataclasses.fields(kind)
    known = {f.name for f in fields}
    if unknown := sorted(set(data) - known):
        raise SystemExit(f"{path}: unknown keys {unknown}")
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    if missing := sorted(required - set(data)):
        raise SystemExit(f"{path}: missing keys {missing}")
    return kind(**data)


def client(s: Settings) -> Any:
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "connect_timeout": s.connect_timeout,
        "read_timeout": s.read_timeout,
        "retries": {"max_attempts": s.max_attempts, "mode": "standard"},
    }
    try:
        # botocore >= 1.36 sends CRC checksum headers that S3-compatible stores reject.
        # Debian 12's botocore (1.29) predates both those headers and these options.
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **options,
        )
    except TypeError:
        config = Config(**options)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s.endpoint,
        region_name=s.region,
        aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key,
        verify=s.ca_bundle or True,
        config=config,
    )


class CreateOnly:
    """Makes every PutObject and CompleteMultipartUpload of `client` "create only"
    (If-None-Match: *): S3 refuses the write (PreconditionFailed) when the key exists, so
    an archive never overwrites an object, even one written by a concurrent writer after
    the HEAD that decided to write. A store that does not implement the header answers
    NotImplemented: `unsupported(e)` turns the header off once (the caller's HEAD before
    each write then decides alone) and tells the caller to retry. Used by the WAL agent
    and base backups: the one copy of this rule."""

    def __init__(self, client: Any) -> None:
        self.enabled = True
        for op in ("PutObject", "CompleteMultipartUpload"):
            client.meta.events.register(f"before-sign.s3.{op}", self._header)

    def _header(self, request: Any, **_: Any) -> None:
        if self.enabled:
            request.headers["If-None-Match"] = "*"

    @staticmethod
    def refused(e: ClientError) -> bool:
        """S3 refused the write: the key exists."""
        return error_code(e) == "PreconditionFailed"

    def unsupported(self, e: ClientError) -> bool:
        """The store does not implement the header: off from now on; retry the write."""
        if self.enabled and error_code(e) == "NotImplemented":
            self.enabled = False
            return True
        return False


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))
