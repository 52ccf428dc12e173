"""The throwaway restore server's settings: whatever came back inside the backup, it must
never archive into, wait for, stream from or listen like the real cluster."""

from __future__ import annotations

import pytest

from tasks.restore import WAL_RESTORE, Scratch, server_options


def _options(restore_command: str | None) -> dict[str, str]:
    flat = server_options(Scratch("drill-1", 6543), restore_command)
    assert flat[0::2] == ["-c"] * (len(flat) // 2)
    return dict(item.split("=", 1) for item in flat[1::2])


def test_the_scratch_server_is_isolated_from_the_cluster():
    opts = _options(WAL_RESTORE)
    assert opts["archive_mode"] == "off"
    assert opts["listen_addresses"] == "" and opts["port"] == "6543"
    assert opts["primary_conninfo"] == "" and opts["primary_slot_name"] == ""
    assert opts["synchronous_standby_names"] == ""
    assert opts["unix_socket_directories"] == "/var/lib/postgresql/lifeboat-restore/drill-1/socket"
    assert opts["restore_command"] == WAL_RESTORE
    assert "restore_command" not in _options(None)  # the restore tool's own stays


@pytest.mark.parametrize(
    ("name", "port"), [("Drill", 6543), ("../x", 6543), ("d", 5432), ("d", 80)]
)
def test_bad_scratch_names_and_ports_are_refused(name: str, port: int):
    with pytest.raises(ValueError, match="scratch name|port"):
        Scratch(name, port)
