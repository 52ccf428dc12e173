"""The media agent's own logic (templates/wordpress/media_agent.py), without S3: what a
push uploads, what a pull fetches, the index, the walk, the verified write. Against a
real S3 server: tests/integration/test_media_agent.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tasks.render import DESTINATIONS, TEMPLATES


def _load() -> ModuleType:
    # As on a droplet, its siblings spaces_client and spaces_layout import by name.
    for folder in (TEMPLATES / "wal", TEMPLATES / "wordpress"):
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    import media_agent

    return media_agent


m = _load()
SEC = 1_000_000_000


def st(size: int, mtime_ns: int) -> SimpleNamespace:
    """What the logic reads of an os.stat_result."""
    return SimpleNamespace(st_size=size, st_mtime_ns=mtime_ns)


def entry(size: int, mtime_ns: int, sha: str = "a" * 64, etag: str = '"e1"'):
    return m.Entry(size, mtime_ns, sha, etag)


def test_settings_are_the_wal_agents_format_plus_the_agents_own():
    fields = {f.name for f in m.dataclasses.fields(m.Settings)}
    assert {"endpoint", "bucket", "prefix", "access_key", "secret_key", "ca_bundle"} <= fields
    assert {"push_interval", "pull_interval", "settle"} <= fields
    assert "secret_key" not in repr(m.Settings("e", "r", "b", "p", "KEY", "SECRET"))


@pytest.mark.parametrize(
    "name, skip",
    [
        ("photo.jpg", False),
        ("photo-150x150.jpg", False),
        (".htaccess", True),
        (".photo.jpg.lifeboat-1a2b3c4d", True),  # the agent's own temp file
        ("photo.jpg~", True),
        ("upload.tmp", True),
        ("video.mp4.part", True),
        ("x.SWP", True),
    ],
)
def test_dotfiles_and_temporary_files_are_skipped(name: str, skip: bool):
    assert m.skipped(name) is skip


def test_push_takes_new_and_changed_files_once_settled():
    now = 100 * SEC
    files = {
        "new.jpg": st(10, now - 2 * SEC),
        "fresh.jpg": st(10, now - SEC // 2),  # still being written, maybe
        "same.jpg": st(10, now - 50 * SEC),
        "grown.jpg": st(20, now - 5 * SEC),
        "touched.jpg": st(10, now - 3 * SEC),
    }
    index = {
        "same.jpg": entry(10, now - 50 * SEC),
        "grown.jpg": entry(10, now - 5 * SEC),
        "touched.jpg": entry(10, now - 60 * SEC),
    }
    ready, waiting = m.to_push(files, index, now, SEC)
    assert ready == ["grown.jpg", "new.jpg", "touched.jpg"]
    assert waiting == ["fresh.jpg"]
    assert m.to_push(files, index, now + SEC, SEC)[1] == []


def test_pull_takes_missing_and_changed_objects_unless_a_local_edit_waits():
    files = {
        "same.jpg": st(10, 1),
        "changed-remotely.jpg": st(10, 2),
        "edited-here.jpg": st(11, 3),
        "never-indexed.jpg": st(10, 4),
    }
    index = {
        "same.jpg": entry(10, 1, etag='"e1"'),
        "changed-remotely.jpg": entry(10, 2, etag='"e1"'),
        "edited-here.jpg": entry(10, 3, etag='"e1"'),
        "deleted-here.jpg": entry(10, 5, etag='"e1"'),
    }
    listing = {
        "same.jpg": '"e1"',
        "changed-remotely.jpg": '"e2"',
        "edited-here.jpg": '"e2"',
        "never-indexed.jpg": '"e2"',
        "deleted-here.jpg": '"e1"',  # deletions are not propagated: it comes back
        "2026/11/new.jpg": '"e3"',
    }
    assert m.to_pull(listing, files, index) == [
        "2026/11/new.jpg",
        "changed-remotely.jpg",
        "deleted-here.jpg",
    ]


def test_a_pulled_file_is_not_pushed_back():
    """What the pull records is exactly what the next walk sees."""
    now = 100 * SEC
    index = {"a.jpg": entry(10, now - 5 * SEC)}
    assert m.to_push({"a.jpg": st(10, now - 5 * SEC)}, index, now, SEC) == ([], [])


def test_the_index_round_trips_and_is_written_atomically(tmp_path: Path):
    path = tmp_path / "state" / "media-index.json"
    index = m.Index(str(path), "/srv/uploads")
    assert index.entries == {}
    index.save()
    assert not path.exists()  # nothing recorded: nothing written
    index.record("2026/11/a.jpg", entry(10, 5))
    index.save()
    assert sorted(p.name for p in path.parent.iterdir()) == ["media-index.json"]
    data = json.loads(path.read_text())
    assert data["dir"] == "/srv/uploads" and data["version"] == 1
    again = m.Index(str(path), "/srv/uploads")
    assert again.get("2026/11/a.jpg") == entry(10, 5) and not again.dirty
    again.record("2026/11/a.jpg", entry(10, 5))
    assert not again.dirty  # the same entry: nothing to write


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 2, "dir": "/srv/uploads", "files": {}}',
        '{"version": 1, "dir": "/elsewhere", "files": {"a.jpg": [1, 2, "s", "e"]}}',
        '{"version": 1, "dir": "/srv/uploads", "files": {"a.jpg": [1, 2]}}',
    ],
)
def test_an_unreadable_or_foreign_index_starts_afresh(tmp_path: Path, text: str):
    path = tmp_path / "media-index.json"
    path.write_text(text)
    assert m.Index(str(path), "/srv/uploads").entries == {}


def test_scan_finds_regular_files_only(tmp_path: Path):
    (tmp_path / "2026" / "11").mkdir(parents=True)
    (tmp_path / "2026" / "11" / "photo.jpg").write_bytes(b"x")
    (tmp_path / "top.png").write_bytes(b"yy")
    (tmp_path / ".hidden").write_bytes(b"z")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.jpg").write_bytes(b"z")
    (tmp_path / "upload.tmp").write_bytes(b"z")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "top.png")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "2026")
    found = m.scan(str(tmp_path))
    assert sorted(found) == ["2026/11/photo.jpg", "top.png"]
    assert found["top.png"].st_size == 2


def test_paths_through_a_symlink_are_refused(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "2026").symlink_to(outside)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError), m.parent_dir(fd, "2026/x.jpg", create=True, owner=None):
            pass
        with m.parent_dir(fd, "2027/11/x.jpg", create=True, owner=None) as d:
            assert os.path.samestat(os.fstat(d), os.stat(root / "2027" / "11"))
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []
    assert stat.S_IMODE((root / "2027").stat().st_mode) == 0o755


@pytest.fixture
def agent(tmp_path: Path):
    root = tmp_path / "uploads"
    root.mkdir()
    settings = m.Settings("http://127.0.0.1:9", "nyc3", "b", "blog", "k", "s")
    a = m.Agent(settings, str(root), str(tmp_path / "index.json"))
    yield a
    a.close()


def test_a_verified_write_lands_whole_and_is_recorded(agent):
    data = b"jpeg bytes" * 1000
    sha = hashlib.sha256(data).hexdigest()
    size = agent.write("2026/11/photo.jpg", io.BytesIO(data), sha, '"e"')
    path = Path(agent.root) / "2026" / "11" / "photo.jpg"
    assert size == len(data) and path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    recorded = agent.index.get("2026/11/photo.jpg")
    assert recorded.sha256 == sha and recorded.etag == '"e"'
    assert recorded.signature == (path.stat().st_size, path.stat().st_mtime_ns)


def test_a_write_that_fails_verification_leaves_nothing(agent):
    with pytest.raises(
        m.Failure, match="fetched bytes have sha256 .*, the object's metadata says 0+: corrupt"
    ):
        agent.write("a.jpg", io.BytesIO(b"forged"), "0" * 64, '"e"')
    assert os.listdir(agent.root) == []
    assert agent.index.get("a.jpg") is None


def test_the_agent_and_its_siblings_are_placed_together():
    placed = {t: DESTINATIONS[t][0] for t in DESTINATIONS if t.endswith(".py")}
    lib = "/usr/local/lib/lifeboat"
    assert placed["wordpress/media_agent.py"] == f"{lib}/media_agent.py"
    for sibling in ("spaces_client", "spaces_layout"):
        assert placed[f"wal/{sibling}.py"] == f"{lib}/{sibling}.py"
    assert DESTINATIONS["wordpress/media.conf.j2"][1:] == ("root:root", "0600")


def test_the_agent_is_standard_library_and_boto_only():
    import ast

    tree = ast.parse((TEMPLATES / "wordpress" / "media_agent.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    siblings = {"spaces_client", "spaces_layout", "botocore", "boto3", "__future__"}
    assert imported <= set(sys.stdlib_module_names) | siblings, imported
