"""The throwaway restore server's settings: whatever came back inside the backup, it must
never archive into, wait for, stream from or listen like the real cluster."""

from __future__ import annotations

import pytest

from tasks.restore import WAL_RESTORE, RestoreError, Scratch, check_replay, server_options


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


# --- how far replay got ------------------------------------------------------------------

MB16 = 16 << 20
PROMOTED_FROM_1 = "1\t0/5800028\tno recovery target specified\n"


def _names(timeline: int, segnos: range) -> list[str]:
    return [f"{timeline:08X}00000000{n:08X}" for n in segnos]


def test_replay_into_the_newest_archived_segment_passes():
    archived = [*_names(1, range(1, 6)), "000000010000000000000002.00000028.backup"]
    replay = check_replay(archived, PROMOTED_FROM_1, 0x5800028, MB16)
    assert replay.segment == replay.expected == "000000010000000000000005"
    assert replay.timeline == 1 and replay.lsn_text == "0/5800028"
    # A segment ended by a switch: the LSN after it is the next segment's first byte.
    assert check_replay(archived, PROMOTED_FROM_1, 0x6000000, MB16).segment.endswith("05")


def test_replay_that_stopped_early_names_the_segment_it_stopped_at():
    archived = _names(1, range(1, 9))  # up to ...08
    with pytest.raises(RestoreError) as e:
        check_replay(archived, PROMOTED_FROM_1, 0x5800028, MB16)
    message = str(e.value)
    assert "stopped at segment 000000010000000000000005" in message
    assert "000000010000000000000006" in message and "up to 000000010000000000000008" in message


def test_an_abandoned_branch_does_not_count_and_the_path_does():
    """Timeline 2 began in segment 6; the old primary still archived 7 and 8 on
    timeline 1 (never replayable here). Replay followed 1 then 2."""
    archived = [*_names(1, range(1, 9)), *_names(2, range(6, 8)), "00000002.history"]
    promoted = "1\t0/6000100\tno recovery target specified\n2\t0/7800000\tno recovery target\n"
    replay = check_replay(archived, promoted, 0x7800000, MB16)
    assert replay.timeline == 2 and replay.expected == "000000020000000000000007"
    with pytest.raises(RestoreError, match="stopped at segment 000000020000000000000006"):
        check_replay([*archived, *_names(2, range(8, 10))], promoted, 0x6800000, MB16)


def test_a_target_lsn_from_the_caller_is_what_replay_must_reach():
    assert check_replay([], PROMOTED_FROM_1, 0x5800028, MB16, target_lsn=0x5800028).expected
    with pytest.raises(RestoreError, match="short of the target 0/7000000"):
        check_replay([], PROMOTED_FROM_1, 0x5800028, MB16, target_lsn=0x7000000)


def test_no_archive_to_check_against_is_an_error_not_a_pass():
    with pytest.raises(RestoreError, match="no WAL segment"):
        check_replay([], PROMOTED_FROM_1, 0x5800028, MB16)
    with pytest.raises(RestoreError, match="no parent timeline"):
        check_replay(_names(1, range(1, 3)), "", 0x1800028, MB16)


def test_restores_use_the_strict_restore_command():
    assert WAL_RESTORE.split()[1] == "--strict"


def test_a_point_in_time_sets_one_recovery_target_after_blanking_the_others():
    flat = server_options(Scratch("drill-1", 6543), WAL_RESTORE, "2026-11-30 14:02:00.000000+00")
    names = [item.split("=", 1)[0] for item in flat[1::2]]
    opts = _options_of(flat)
    assert opts["recovery_target_time"] == "2026-11-30 14:02:00.000000+00"
    assert opts["recovery_target_action"] == "promote"
    for other in ("recovery_target", "recovery_target_lsn", "recovery_target_name"):
        assert opts[other] == "" and names.index(other) < names.index("recovery_target_time")
    assert _options(WAL_RESTORE)["recovery_target_time"] == ""  # to the end: no target


def _options_of(flat: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in flat[1::2])
