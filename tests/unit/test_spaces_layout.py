"""The object layout in Spaces (templates/wal/spaces_layout.py): one file, imported by the
droplet programs beside them and by the orchestrator through tasks.layout."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from blocks.stack import StackSpec
from tasks import catalog, layout, wal
from tasks.render import DESTINATIONS, TEMPLATES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SOURCE = TEMPLATES / "wal" / "spaces_layout.py"
SID = "7312345678901234567"
SEG = "000000010000000000000003"


def test_keys_are_the_documented_layout():
    assert layout.stack_prefix("blog") == "blog/"
    assert layout.wal_prefix("blog", SID) == f"blog/{SID}/wal/"
    assert layout.wal_key("blog", SID, SEG) == f"blog/{SID}/wal/{SEG}.zst"
    assert layout.wal_key("blog", SID, "00000002.history") == f"blog/{SID}/wal/00000002.history.zst"
    assert layout.backups_prefix("blog", SID) == f"blog/{SID}/backups/"
    assert layout.base_key("blog", SID, "20261126T000000Z") == (
        f"blog/{SID}/backups/20261126T000000Z/base.tar.zst"
    )
    assert layout.manifest_key("blog", SID, "20261126T000000Z") == (
        f"blog/{SID}/backups/20261126T000000Z/manifest.json"
    )
    # The droplet programs' reading of wal.conf's prefix: slashes around it dropped, an
    # empty prefix left out, a prefix with a slash inside kept (the unit tests use one).
    assert layout.wal_key("/blog/", SID, SEG) == f"blog/{SID}/wal/{SEG}.zst"
    assert layout.wal_key("", SID, SEG) == f"{SID}/wal/{SEG}.zst"
    assert layout.stack_prefix("") == ""
    assert layout.base_key("a/b", 42, "x") == "a/b/42/backups/x/base.tar.zst"


def test_keys_parse_back_and_other_stacks_do_not():
    assert layout.parse_wal("blog", layout.wal_key("blog", SID, SEG)) == (SID, SEG)
    assert layout.parse_wal("", layout.wal_key("", SID, SEG)) == (SID, SEG)
    assert layout.parse_wal("a/b", layout.wal_key("a/b", SID, SEG)) == (SID, SEG)
    base = layout.base_key("blog", SID, "b1")
    assert layout.parse_backup("blog", base) == (SID, "b1", "base.tar.zst")
    assert layout.parse_wal("blog", base) is None
    assert layout.parse_backup("blog", layout.wal_key("blog", SID, SEG)) is None
    assert layout.is_manifest("blog", layout.manifest_key("blog", SID, "b1"))
    assert not layout.is_manifest("blog", base)
    # A stack whose name starts with another's is not the other's.
    assert layout.parse_wal("blog", layout.wal_key("blog2", SID, SEG)) is None
    assert not layout.is_manifest("blog", layout.manifest_key("blog2", SID, "b1"))
    assert not layout.backup_area("blog", layout.base_key("blog2", SID, "b1"))
    assert layout.parse_wal("blog", f"blog/{SID}/wal/{SEG}") is None  # not compressed: not ours
    assert layout.backup_area("blog", f"blog/{SID}/backups/b1/part/deeper")
    assert not layout.backup_area("blog", f"blog/{SID}/wal/{SEG}.zst")


def test_media_keys_are_beside_the_system_ids_and_parse_back():
    assert layout.media_prefix("blog") == "blog/media/"
    assert layout.media_key("blog", "2026/11/photo.jpg") == "blog/media/2026/11/photo.jpg"
    assert layout.media_key("/blog/", "a.png") == "blog/media/a.png"
    assert layout.media_key("", "a.png") == "media/a.png"
    assert layout.media_prefix("") == "media/"
    assert layout.parse_media("blog", "blog/media/2026/11/photo.jpg") == "2026/11/photo.jpg"
    assert layout.parse_media("a/b", layout.media_key("a/b", "x/y.jpg")) == "x/y.jpg"
    assert layout.parse_media("", "media/x.jpg") == "x.jpg"
    # Another stack's, WAL, backups, the folder itself: not media.
    assert layout.parse_media("blog", "blog2/media/x.jpg") is None
    assert layout.parse_media("blog", layout.wal_key("blog", SID, SEG)) is None
    assert layout.parse_media("blog", "blog/media/") is None
    assert layout.parse_media("blog", "blog/media") is None


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", ".", "a\0b"]
)
def test_media_paths_that_could_escape_uploads_are_refused(path: str):
    with pytest.raises(ValueError):
        layout.media_key("blog", path)
    assert layout.parse_media("blog", "blog/media/" + path) is None


def test_media_named_like_wal_or_backups_is_never_read_as_them():
    """A WordPress upload folder called `wal` or `backups` must not become WAL to prune or
    a cut-off backup to delete."""
    wal_like = layout.media_key("blog", f"wal/{SEG}.zst")
    backup_like = layout.media_key("blog", "backups/b1/manifest.json")
    orphan_like = layout.media_key("blog", "backups/cut/base.tar.zst")
    assert layout.parse_wal("blog", wal_like) is None
    assert layout.parse_backup("blog", backup_like) is None
    assert not layout.is_manifest("blog", backup_like)
    assert not layout.backup_area("blog", orphan_like)
    keys = [wal_like, backup_like, orphan_like, layout.wal_key("blog", SID, SEG)]
    assert catalog.wal_names(keys, "blog") == {SID: [SEG]}
    assert catalog.manifests(keys, "blog") == []
    assert catalog.orphans(keys, "blog") == []


def test_the_catalog_reads_a_listing_through_the_layout():
    other = "9999"
    keys = [
        layout.wal_key("blog", SID, SEG),
        layout.wal_key("blog", SID, "00000002.history"),
        layout.wal_key("blog", other, SEG),
        layout.wal_key("blog2", SID, "000000010000000000000009"),  # another stack
        layout.base_key("blog", SID, "b1"),
        layout.manifest_key("blog", SID, "b1"),
        layout.base_key("blog", SID, "cut"),  # no manifest: a cut-off run's
        f"blog/{SID}/backups/cut/part/deeper",
        layout.manifest_key("blog", other, "b2"),
        layout.manifest_key("blog2", SID, "b3"),
    ]
    assert catalog.wal_names(keys, "blog") == {SID: [SEG, "00000002.history"], other: [SEG]}
    assert catalog.manifests(keys, "blog") == sorted(
        [layout.manifest_key("blog", SID, "b1"), layout.manifest_key("blog", other, "b2")]
    )
    assert catalog.orphans(keys, "blog") == [
        layout.base_key("blog", SID, "cut"),
        f"blog/{SID}/backups/cut/part/deeper",
    ]
    assert catalog.history_name(2) == "00000002.history"
    assert catalog.MANIFEST == layout.MANIFEST == "manifest.json"


def test_the_layout_is_standard_library_only():
    """It runs on droplets with Debian's python3 beside the programs: nothing but stdlib."""
    tree = ast.parse(SOURCE.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_the_orchestrator_loads_the_file_the_droplets_get():
    assert layout.SOURCE == SOURCE
    assert layout.wal_key.__code__.co_filename == str(SOURCE)
    # Beside the programs that import it as a sibling module.
    placed = {t: DESTINATIONS[t][0] for t in DESTINATIONS if t.startswith("wal/") and ".py" in t}
    assert set(placed) == {
        "wal/wal_agent.py",
        "wal/basebackup.py",
        "wal/spaces_layout.py",
        "wal/spaces_client.py",
    }
    assert {p.rsplit("/", 1)[0] for p in placed.values()} == {"/usr/local/lib/lifeboat"}
    assert placed["wal/spaces_layout.py"].endswith("/spaces_layout.py")


def test_the_cluster_run_places_it_before_the_agent(monkeypatch: pytest.MonkeyPatch):
    """Existing droplets get it on the next cluster run, placed before the agent that
    imports it, and a change to it restarts the agent (which loaded the old one)."""
    placed: list[tuple[str, str]] = []
    commands: list[str] = []

    def put(conn, path, content, mode="0644", owner="root:root"):  # noqa: ANN001
        placed.append((path, content))
        return path.endswith("/spaces_layout.py")

    def run(conn, command, timeout=300, warn=False):  # noqa: ANN001
        commands.append(command)
        return SimpleNamespace(ok=True, stdout="")

    monkeypatch.setattr(wal, "put", put)
    monkeypatch.setattr(wal, "run", run)
    spec = StackSpec.from_yaml(EXAMPLES / "compact.yaml")
    spaces = {"endpoint": "https://x", "region": "nyc3", "access_key": "a", "secret_key": "s"}
    assert wal.configure(SimpleNamespace(host="db-1"), spec, spaces) is True
    paths = [p for p, _ in placed]
    here = paths.index(DESTINATIONS["wal/spaces_layout.py"][0])
    assert here < paths.index(DESTINATIONS["wal/wal_agent.py"][0])
    client = paths.index(DESTINATIONS["wal/spaces_client.py"][0])
    assert client < paths.index(DESTINATIONS["wal/wal_agent.py"][0])
    assert dict(placed)[DESTINATIONS["wal/spaces_layout.py"][0]] == SOURCE.read_text()
    assert DESTINATIONS["wal/basebackup.py"][0] in paths
    assert f"systemctl restart {wal.UNIT}" in commands
