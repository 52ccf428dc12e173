"""`tasks.hosts.put`'s order of operations: a secret file gets its final owner and mode
while still empty, before its content is written, and only then is renamed into place
(the SFTP write into an existing file keeps that mode: fabric's putfo never chmods)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from tasks import hosts


class Recorder:
    """Stands in for a fabric Connection: records what put asks of it, in order."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def run(self, command: str, **_: object) -> SimpleNamespace:
        self.steps.append(f"run: {command}")
        return SimpleNamespace(ok=False, stdout="")  # the file is not there yet

    def put(self, data: io.BytesIO, remote: str) -> None:
        self.steps.append(f"write {len(data.getvalue())} bytes to {remote}")


def test_mode_and_owner_come_before_the_content():
    conn = Recorder()
    assert hosts.put(conn, "/etc/lifeboat/wal.conf", "secret", "0600", "postgres:postgres")
    create, write, rename = conn.steps[1:]
    assert "(umask 077 && : > /etc/lifeboat/wal.conf.lifeboat-new)" in create
    assert create.index("umask 077") < create.index("chown postgres:postgres")
    assert create.endswith("chmod 0600 /etc/lifeboat/wal.conf.lifeboat-new")
    assert write == "write 6 bytes to /etc/lifeboat/wal.conf.lifeboat-new"
    assert rename == "run: mv /etc/lifeboat/wal.conf.lifeboat-new /etc/lifeboat/wal.conf"
