"""The restore drill's rules: which backup it restores, how RPO is read from the markers,
what counts as the site's rows differing, and where the scratch droplet lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.stack import StackSpec
from flows.drill import DrillFailed, choose_backup
from tasks.backup import Entry
from tasks.catalog import Backup
from tasks.drill import Found, Marker, count_differences

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _entry(backup_id: str, stopped_at: float) -> Entry:
    b = Backup(backup_id, "7", stopped_at, 0, 1, 16 << 20, ())
    return Entry(b, {"id": backup_id})


ENTRIES = [_entry("20261101T030000Z", 1.0), _entry("20261102T030000Z", 2.0)]


def test_the_newest_backup_unless_one_is_named():
    assert choose_backup(ENTRIES, None).backup.id == "20261102T030000Z"
    assert choose_backup(ENTRIES, "20261101T030000Z").backup.id == "20261101T030000Z"


def test_an_unknown_backup_id_lists_what_exists():
    with pytest.raises(DrillFailed, match="20261101T030000Z, 20261102T030000Z"):
        choose_backup(ENTRIES, "20250101T000000Z")
    with pytest.raises(DrillFailed, match="run `lifeboat backup` first"):
        choose_backup([], None)


MARKER = Marker("abc", 1000.0, "wordpress", {"wp_posts": 5, "wp_users": 1})


def _found(marker: bool, newest: float | None, counts: dict[str, int]) -> Found:
    return Found(marker, newest, counts, None)


def test_rpo_is_zero_when_the_marker_came_back():
    assert _found(True, 1000.0, {}).rpo_seconds(MARKER) == 0.0


def test_rpo_is_how_far_before_the_marker_the_newest_restored_one_was():
    assert _found(False, 940.5, {}).rpo_seconds(MARKER) == 59.5
    assert _found(False, None, {}).rpo_seconds(MARKER) is None


def test_count_differences_name_the_table_and_both_counts():
    same = _found(True, 1000.0, {"wp_posts": 5, "wp_users": 1})
    assert count_differences(MARKER, same) == []
    fewer = _found(True, 1000.0, {"wp_posts": 4, "wp_users": 1})
    assert count_differences(MARKER, fewer) == ["wp_posts: 5 rows with the marker, 4 restored"]


def test_the_scratch_droplet_is_outside_the_stack():
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    assert spec.drill_tag != spec.stack_tag
    assert spec.drill_droplet_name not in {n.name for n in spec.nodes()}
    assert spec.drill_firewall_name not in {spec.resource_name, spec.web_firewall_name}


# --- point in time: which backup, and which times are refused ----------------------------

B1, B2 = ENTRIES[0].backup, ENTRIES[1].backup  # finished at 1.0 and 2.0, system "7"


def test_a_point_in_time_starts_from_the_newest_backup_finished_before_it():
    from tasks.catalog import backup_for_time

    assert backup_for_time([B1, B2], 1.5, {"7": 10.0}, now=100.0) is B1
    assert backup_for_time([B1, B2], 2.0, {"7": 10.0}, now=100.0) is B2
    assert backup_for_time([B2, B1], 9.0, {"7": 10.0}, now=100.0) is B2


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (0.5, "before the oldest kept backup finished"),
        (11.0, "after the newest archived WAL"),
        (101.0, "in the future"),
    ],
)
def test_unreachable_times_are_refused_saying_which_are_possible(target: float, why: str):
    from tasks.catalog import TargetTimeRefused, backup_for_time

    with pytest.raises(TargetTimeRefused, match=why) as refused:
        backup_for_time([B1, B2], target, {"7": 10.0}, now=100.0)
    assert "possible times are 1970-01-01T00:00:01Z to 1970-01-01T00:00:10Z" in str(refused.value)


def test_the_drill_refuses_a_backup_id_and_a_target_time_together():
    with pytest.raises(DrillFailed, match="not both"):
        choose_backup(ENTRIES, "20261101T030000Z", 1.5, {"7": 10.0}, 100.0)
    with pytest.raises(DrillFailed, match="in the future; .* nothing was created"):
        choose_backup(ENTRIES, None, 101.0, {"7": 10.0}, 100.0)


def test_missing_media_names_referenced_uploads_without_an_object() -> None:
    from tasks import layout
    from tasks.drill import missing_media

    stored = {
        layout.media_key("s", "2026/11/a.png"): 120,
        layout.media_key("s", "2026/11/empty.png"): 0,  # an empty object is no upload
        layout.media_key("other", "2026/11/b.png"): 50,  # another stack's is not ours
    }
    referenced = ["2026/11/a.png", "2026/11/b.png", "2026/11/empty.png", "../etc/passwd"]
    assert missing_media("s", referenced, stored) == [
        "2026/11/b.png",
        "2026/11/empty.png",
        "../etc/passwd (not a path under uploads/)",
    ]
    assert missing_media("s", ["2026/11/a.png"], stored) == []
