"""The stand-in's state: DO-shaped records behind one lock, saved as JSON after each change."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Collections keyed by id (as a string: JSON object keys are strings).
COLLECTIONS = (
    "droplets",
    "actions",
    "ssh_keys",
    "tags",
    "vpcs",
    "firewalls",
    "load_balancers",
    # Destroyed resources whose machine clean-up has not finished: their addresses stay
    # reserved so a new droplet never gets an address that is still on the bridge.
    "destroying_droplets",
    "destroying_load_balancers",
)
FIRST_IDS = {"droplet": 410000001, "action": 2100000001, "ssh_key": 41000001}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uuid() -> str:
    return str(uuid.uuid4())


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.data: dict[str, Any] = {name: {} for name in COLLECTIONS}
        self.data["next_ids"] = dict(FIRST_IDS)
        self.data["account_uuid"] = new_uuid()
        if path.exists():
            loaded = json.loads(path.read_text())
            for name in COLLECTIONS:
                self.data[name] = loaded.get(name, {})
            self.data["next_ids"].update(loaded.get("next_ids", {}))
            self.data["account_uuid"] = loaded.get("account_uuid", self.data["account_uuid"])

    def __getattr__(self, name: str) -> dict[str, Any]:
        if name in COLLECTIONS:
            return self.data[name]
        raise AttributeError(name)

    def next_id(self, kind: str) -> int:
        value = self.data["next_ids"][kind]
        self.data["next_ids"][kind] = value + 1
        return value

    @property
    def account_uuid(self) -> str:
        return self.data["account_uuid"]

    @contextlib.contextmanager
    def change(self) -> Iterator[Store]:
        """Hold the lock for a change and save once it is done (also if it failed half-way,
        so memory and disk never disagree)."""
        with self.lock:
            try:
                yield self
            finally:
                self.save()

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self.data, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
