"""The catalog's logic: segment names, the WAL a backup needs across timelines, gaps, and
what retention keeps and deletes."""

from __future__ import annotations

from tasks import catalog
from tasks.catalog import DAY, Backup

SEG = 16 << 20


def test_lsn_and_segment_names_match_postgresql():
    # pg_walfile_name('16/B374D848') on timeline 1 = 0000000100000016000000B3
    assert catalog.segment_name(1, catalog.lsn("16/B374D848") // SEG, SEG) == (
        "0000000100000016000000B3"
    )
    assert catalog.parse_segment("0000000100000016000000B3", SEG) == (1, 0x16 * 256 + 0xB3)
    assert catalog.parse_segment("000000020000000000000005.partial", SEG) == (2, 5)
    assert catalog.parse_segment("000000010000000000000002.00000028.backup", SEG) == (1, 2)
    assert catalog.parse_segment("00000002.history", SEG) is None


def test_needed_segments_follow_the_timeline_history():
    # TL1 until 0/3800000 (in segment 3), TL2 until 0/5000000 (segment 5 starts there).
    history = catalog.parse_history("1\t0/3800000\tno recovery target\n2\t0/5000000\tx\n")
    needed = catalog.needed_segments(
        catalog.lsn("0/2000028"), catalog.lsn("0/6000100"), 3, history, SEG
    )
    assert needed == [
        "000000010000000000000002",
        "000000020000000000000003",  # the switch point's segment comes from the new timeline
        "000000020000000000000004",
        "000000030000000000000005",
        "000000030000000000000006",
    ]
    archived = set(needed) - {"000000020000000000000004"}
    archived.add("000000010000000000000004")  # the old timeline's copy does not count
    assert catalog.missing(needed, archived) == ["000000020000000000000004"]


def _backup(id: str, days_ago: float, start_seg: int, system: str = "7") -> Backup:
    now = 1_000 * DAY
    return Backup(
        id=id,
        system_id=system,
        stopped_at=now - days_ago * DAY,
        start_lsn=start_seg * SEG + 40,
        timeline=1,
        segment_size=SEG,
        keys=(f"s/{system}/backups/{id}/base.tar.zst", f"s/{system}/backups/{id}/manifest.json"),
    )


def test_retention_keeps_the_newest_n_and_covers_the_window():
    now = 1_000 * DAY
    backups = [
        _backup(f"b{i}", days, seg)
        for i, (days, seg) in enumerate(
            [(0.1, 90), (1, 80), (2, 70), (9, 60), (15, 50), (20, 40), (30, 30)]
        )
    ]
    kept, expired = catalog.retention(backups, now, keep_count=2, keep_days=10)
    # newest 2, everything younger than 10 days, and b4 (15 days): the start of the window
    assert [b.id for b in kept] == ["b0", "b1", "b2", "b3", "b4"]
    assert [b.id for b in expired] == ["b5", "b6"]
    kept, expired = catalog.retention(backups, now, keep_count=6, keep_days=1)
    assert [b.id for b in kept] == ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert [b.id for b in expired] == ["b6"]


def test_expired_wal_is_only_what_no_kept_backup_needs():
    kept = [_backup("new", 1, 0x50), _backup("old", 5, 0x40)]
    wal = {
        "7": [
            catalog.segment_name(1, 0x3F, SEG),
            catalog.segment_name(1, 0x3E, SEG) + ".partial",
            catalog.segment_name(1, 0x3E, SEG) + ".00000028.backup",
            catalog.segment_name(1, 0x40, SEG),  # the oldest kept backup starts here
            catalog.segment_name(2, 0x41, SEG),
            "00000002.history",
        ],
        "8": ["000000010000000000000001"],  # an older cluster whose backups all expired
        "9": ["000000010000000000000001"],  # a cluster with no backup yet: not touched
    }
    doomed = catalog.expired_wal(wal, kept, cataloged_systems={"7", "8"})
    assert doomed == {
        "7": sorted(wal["7"][:3]),
        "8": ["000000010000000000000001"],
    }


def _starting_at(backup_id: str, start_segno: int, stopped_at: float) -> Backup:
    return Backup(backup_id, "7", stopped_at, start_segno * SEG + 0x28, 1, SEG, ())


def test_a_hole_in_the_archive_names_the_backups_whose_range_it_cuts():
    old, new = _starting_at("b-old", 2, 1.0), _starting_at("b-new", 6, 2.0)
    archived = {catalog.segment_name(1, n, SEG) for n in range(2, 10) if n not in (4, 5)}
    missing, cut = catalog.first_hole([old, new], archived, 1, [], 9)
    assert missing == ["000000010000000000000004", "000000010000000000000005"]
    assert [b.id for b in cut] == ["b-old"]  # the newer backup starts after the hole


def test_no_hole_across_a_timeline_switch():
    # TL1 until segment 5 (switch at 0/5800000), TL2 from there: segment 5 comes from TL2.
    history = catalog.parse_history("1\t0/5800000\tno recovery target\n")
    archived = {catalog.segment_name(1, n, SEG) for n in range(2, 6)}
    archived |= {catalog.segment_name(2, n, SEG) for n in range(5, 8)}
    assert catalog.first_hole([_starting_at("b", 2, 1.0)], archived, 2, history, 7) is None
    archived.discard(catalog.segment_name(2, 5, SEG))  # only TL1's copy of segment 5 left
    missing, _ = catalog.first_hole([_starting_at("b", 2, 1.0)], archived, 2, history, 7)
    assert missing == ["000000020000000000000005"]


def test_a_diverged_copy_is_a_segment_for_retention_but_never_fills_a_hole():
    name = "000000010000000000000004.diverged-0123456789abcdef"
    assert catalog.parse_segment(name, SEG) == (1, 4)
    archived = {catalog.segment_name(1, n, SEG) for n in (2, 3, 5)} | {name}
    missing, _ = catalog.first_hole([_starting_at("b", 2, 1.0)], archived, 1, [], 5)
    assert missing == ["000000010000000000000004"]
