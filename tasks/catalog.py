"""The backup catalog in Spaces, as pure logic: WAL segment names, the WAL a backup needs,
gaps in the archive, and what retention keeps. Where the objects live (one prefix per
stack, then per PostgreSQL system identifier) is `tasks.layout`'s to say: the same file
the droplet programs write by (templates/wal/spaces_layout.py).

A backup is in the catalog only when its manifest is stored and every object the manifest
lists is stored with the size it records."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tasks import layout

# A segment, its .partial or .backup file, or another version of a replaced timeline's
# segment the WAL agent kept beside it (.diverged-<sha256 prefix>).
SEGMENT = re.compile(
    r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})"
    r"(\.partial|\.[0-9A-F]{8}\.backup|\.diverged-[0-9a-f]{16})?$"
)
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
MANIFEST = layout.MANIFEST
DAY = 86400


def lsn(text: str) -> int:
    """'16/B374D848' -> an integer position."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per_id = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def history_name(timeline: int) -> str:
    """A timeline's history file, as PostgreSQL names it."""
    return f"{timeline:08X}.history"


def parse_segment(name: str, segment_size: int) -> tuple[int, int] | None:
    """(timeline, segment number) of a WAL file name (a segment, .partial or .backup file);
    None for anything else (history files)."""
    m = SEGMENT.match(name)
    if not m:
        return None
    per_id = 0x1_0000_0000 // segment_size
    return int(m[1], 16), int(m[2], 16) * per_id + int(m[3], 16)


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file's (parent timeline, switch point LSN) lines, oldest first."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            out.append((int(fields[0]), lsn(fields[1])))
    return out


def timeline_begins(timeline: int, history: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(timeline, LSN where it begins) for every timeline leading to `timeline`, newest
    first: what recovery follows (PostgreSQL's expectedTLEs)."""
    begins = [(timeline, history[-1][1] if history else 0)]
    for i in range(len(history) - 1, -1, -1):
        parent = history[i][0]
        begins.append((parent, history[i - 1][1] if i > 0 else 0))
    return begins


def needed_segments(
    start_lsn: int,
    end_lsn: int,
    timeline: int,
    history: list[tuple[int, int]],
    segment_size: int,
) -> list[str]:
    """The segment files recovery reads from start_lsn to end_lsn (inclusive) following
    `timeline`'s history: for each segment, the newest timeline that began at or before
    it (the segment holding a switch point comes from the new timeline)."""
    begins = timeline_begins(timeline, history)
    names = []
    for segno in range(start_lsn // segment_size, end_lsn // segment_size + 1):
        tli = next(t for t, begin in begins if begin // segment_size <= segno)
        names.append(segment_name(tli, segno, segment_size))
    return names


def missing(needed: Iterable[str], archived: set[str]) -> list[str]:
    return [name for name in needed if name not in archived]


def first_hole(
    backups: list[Backup],
    archived: set[str],
    timeline: int,
    history: list[tuple[int, int]],
    last_segno: int,
) -> tuple[list[str], list[Backup]] | None:
    """The archive's first run of missing segments between the oldest backup's start and
    `last_segno` along `timeline`'s history, and the backups whose recovery would read
    across it (each can be restored only to a point before the hole). None: no hole."""
    if not backups:
        return None
    size = backups[0].segment_size
    oldest = min(b.start_lsn for b in backups)
    needed = needed_segments(oldest, last_segno * size, timeline, history, size)
    absent = missing(needed, archived)
    if not absent:
        return None
    first = needed.index(absent[0])
    run = [absent[0]]
    for name in needed[first + 1 :]:
        if name in archived:
            break
        run.append(name)
    hole_segno = parse_segment(run[0], size)[1]  # type: ignore[index]
    cut = [b for b in backups if b.start_segno <= hole_segno]
    return run, sorted(cut, key=lambda b: b.stopped_at)


# --- a listing of the stack's objects (key -> size), read through the layout ------------


def wal_names(keys: Iterable[str], stack: str) -> dict[str, list[str]]:
    """system id -> archived WAL file names."""
    out: dict[str, list[str]] = {}
    for key in keys:
        found = layout.parse_wal(stack, key)
        if found is not None:
            out.setdefault(found[0], []).append(found[1])
    return out


def manifests(keys: Iterable[str], stack: str) -> list[str]:
    """Every backup manifest's key, sorted."""
    return sorted(k for k in keys if layout.is_manifest(stack, k))


def orphans(keys: Iterable[str], stack: str) -> list[str]:
    """Objects in backups/ that belong to no manifest's backup: what a cut-off run left."""
    area = [k for k in keys if layout.backup_area(stack, k)]
    with_manifest = {k.rsplit("/", 1)[0] for k in area if layout.is_manifest(stack, k)}
    return [k for k in area if k.rsplit("/", 1)[0] not in with_manifest]


@dataclass(frozen=True)
class Backup:
    """A cataloged backup: what retention and status need of its manifest."""

    id: str
    system_id: str
    stopped_at: float
    start_lsn: int
    timeline: int
    segment_size: int
    keys: tuple[str, ...]  # every object, manifest included

    @property
    def start_segno(self) -> int:
        return self.start_lsn // self.segment_size

    @classmethod
    def from_manifest(cls, manifest: dict, manifest_key: str) -> Backup:
        return cls(
            id=manifest["id"],
            system_id=str(manifest["system_identifier"]),
            stopped_at=float(manifest["stopped_at"]),
            start_lsn=lsn(manifest["start_lsn"]),
            timeline=int(manifest["timeline"]),
            segment_size=int(manifest["wal_segment_size"]),
            keys=(*(o["key"] for o in manifest["objects"]), manifest_key),
        )


def retention(
    backups: list[Backup], now: float, keep_count: int, keep_days: int
) -> tuple[list[Backup], list[Backup]]:
    """(kept, expired). Kept: the newest `keep_count`; every backup younger than
    `keep_days`; and the newest one older than that, because a restore to a point
    `keep_days` ago starts from a backup taken before it."""
    ordered = sorted(backups, key=lambda b: b.stopped_at, reverse=True)
    horizon = now - keep_days * DAY
    keep = {b.id for b in ordered[:keep_count]}
    keep |= {b.id for b in ordered if b.stopped_at >= horizon}
    older = [b for b in ordered if b.stopped_at < horizon]
    if older:
        keep.add(older[0].id)
    return [b for b in ordered if b.id in keep], [b for b in ordered if b.id not in keep]


def expired_wal(
    wal: dict[str, list[str]], kept: list[Backup], cataloged_systems: set[str]
) -> dict[str, list[str]]:
    """system id -> WAL file names no kept backup needs. Only for systems that have (or
    had) backups in the catalog: a cluster with no backup yet keeps all its WAL. Within a
    system with kept backups: every segment before the oldest kept backup's start segment
    (any timeline); history files are kept (tiny, and recovery reads them). A system whose
    backups all expired loses all its WAL."""
    out: dict[str, list[str]] = {}
    for system_id, names in wal.items():
        if system_id not in cataloged_systems:
            continue
        mine = [b for b in kept if b.system_id == system_id]
        if not mine:
            out[system_id] = sorted(names)
            continue
        size = mine[0].segment_size
        oldest = min(b.start_segno for b in mine)
        doomed = []
        for name in names:
            parsed = parse_segment(name, size)
            if parsed is not None and parsed[1] < oldest:
                doomed.append(name)
        if doomed:
            out[system_id] = sorted(doomed)
    return out


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class TargetTimeRefused(ValueError):
    """A point-in-time target no backup and archive can reach; says which times can."""


def backup_for_time(
    backups: list[Backup], target: float, newest_wal: dict[str, float], now: float
) -> Backup:
    """The backup a restore to `target` (epoch seconds) starts from: the newest one that
    finished before it. `newest_wal`: system id -> when its newest archived WAL segment
    was stored (no commit after that can be replayed). Refused, saying the possible
    range, when the target is in the future, before the oldest backup finished, or after
    the newest archived WAL of the backup it would start from."""
    if not backups:
        raise TargetTimeRefused("the catalog holds no backup: run `lifeboat backup` first")
    ordered = sorted(backups, key=lambda b: b.stopped_at)
    newest_system = ordered[-1].system_id
    latest = newest_wal.get(newest_system, ordered[-1].stopped_at)
    possible = f"possible times are {utc(ordered[0].stopped_at)} to {utc(latest)}"
    if target > now:
        raise TargetTimeRefused(f"target time {utc(target)} is in the future; {possible}")
    before = [b for b in ordered if b.stopped_at <= target]
    if not before:
        raise TargetTimeRefused(
            f"target time {utc(target)} is before the oldest kept backup finished; {possible}"
        )
    chosen = before[-1]
    reach = newest_wal.get(chosen.system_id, chosen.stopped_at)
    if target > reach:
        raise TargetTimeRefused(
            f"target time {utc(target)} is after the newest archived WAL ({utc(reach)}); {possible}"
        )
    return chosen
