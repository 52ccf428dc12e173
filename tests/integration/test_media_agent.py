"""The media agent (templates/wordpress/media_agent.py) as on a web droplet: Debian's
/usr/bin/python3 with python3-boto3, the program and its siblings copied into one folder
as DESTINATIONS places them, two agents (two droplets) with two uploads folders on one
bucket and prefix, against the WAL agent tests' real S3 server (moto) on loopback.

Needs on the host: apt-get install -y python3-boto3 systemd."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.render import DESTINATIONS, TEMPLATES, render
from tests.integration import test_wal_agent as wal_tests
from tests.integration.test_wal_agent import BUCKET, PYTHON, SECRET, Moto, wait_for

# The WAL agent tests' S3 server and Debian-python check, shared by name.
moto = wal_tests.moto
debian_python = wal_tests.debian_python

LIB = "/usr/local/lib/lifeboat/"


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/usr/local/lib/lifeboat/ as a web droplet has it: every program DESTINATIONS puts
    there, under its destination's name (the agent imports its siblings by name)."""
    folder = tmp_path_factory.mktemp("lib")
    for template, (path, _, _) in DESTINATIONS.items():
        if path.startswith(LIB) and path.endswith(".py"):
            shutil.copy(TEMPLATES / template, folder / path.removeprefix(LIB))
    return folder


@dataclass
class Droplet:
    """One web droplet's view: its uploads folder, config and index."""

    lib: Path
    base: Path

    @property
    def uploads(self) -> Path:
        return self.base / "uploads"

    @property
    def conf(self) -> Path:
        return self.base / "media.conf"

    @property
    def index(self) -> Path:
        return self.base / "media-index.json"

    def command(self, what: str) -> list[str]:
        return [
            PYTHON,
            str(self.lib / "media_agent.py"),
            "--config",
            str(self.conf),
            "--dir",
            str(self.uploads),
            "--index",
            str(self.index),
            what,
        ]

    def sync(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command("sync"), capture_output=True, text=True, timeout=120)

    def write(self, path: str, data: bytes, age: float = 5) -> Path:
        """A file as WordPress leaves it, `age` seconds old (past the settle time)."""
        file = self.uploads / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        if age:
            st = file.stat()
            os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns - int(age * 1e9)))
        return file

    def leftovers(self) -> list[str]:
        return sorted(str(p) for p in self.uploads.rglob(".*"))


@pytest.fixture
def droplets(moto: Moto, lib: Path, tmp_path: Path) -> Callable[..., tuple[Droplet, Droplet]]:
    """Two droplets on one fresh prefix (each test its own stack); config like wal.conf."""

    def make(**config: object) -> tuple[Droplet, Droplet]:
        prefix = f"media-{uuid.uuid4().hex[:8]}"
        pair = []
        for name in ("web-1", "web-2"):
            d = Droplet(lib, tmp_path / name)
            d.uploads.mkdir(parents=True)
            text = render(
                "wordpress/media.conf.j2",
                endpoint=moto.endpoint,
                region="nyc3",
                bucket=BUCKET,
                prefix=prefix,
                access_key="TESTKEY",
                secret_key=SECRET,
                **config,
            )
            fd = os.open(d.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            pair.append(d)
        make.prefix = prefix  # type: ignore[attr-defined]
        return pair[0], pair[1]

    return make


def puts(moto: Moto, key: str) -> int:
    """PUT requests moto logged for this key (its request log: one line per request)."""
    return moto.log.read_text(errors="replace").count(f'"PUT /{BUCKET}/{key} ')


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- sync ---------------------------------------------------------------------------------


def test_a_file_written_on_one_droplet_appears_on_the_other(moto: Moto, droplets) -> None:
    a, b = droplets()
    data = os.urandom(300_000)
    a.write("2026/11/photo.jpg", data)
    a.write("2026/11/photo-150x150.jpg", b"thumb")
    one = a.sync()
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "pushed 2, waiting 0, pulled 0, failed 0"
    key = f"{droplets.prefix}/media/2026/11/photo.jpg"
    obj = moto.client.head_object(Bucket=BUCKET, Key=key)
    assert obj["Metadata"]["sha256"] == sha(data) and obj["ContentType"] == "image/jpeg"

    if os.geteuid() == 0:  # as on a droplet: uploads belong to www-data, the agent is root
        os.chown(b.uploads, 33, 33)
    two = b.sync()
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == "pushed 0, waiting 0, pulled 2, failed 0"
    got = b.uploads / "2026" / "11" / "photo.jpg"
    assert got.read_bytes() == data
    assert (b.uploads / "2026" / "11" / "photo-150x150.jpg").read_bytes() == b"thumb"
    assert oct(got.stat().st_mode & 0o777) == "0o644"
    assert oct((b.uploads / "2026").stat().st_mode & 0o777) == "0o755"
    owner = b.uploads.stat()
    for made in (got, b.uploads / "2026", b.uploads / "2026" / "11"):
        assert (made.stat().st_uid, made.stat().st_gid) == (owner.st_uid, owner.st_gid)
    assert b.leftovers() == []

    # Nothing goes back up: not from the droplet that pulled, not from the one that pushed.
    before = puts(moto, key)
    assert before == 1
    for d in (b, a, b):
        again = d.sync()
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "pushed 0, waiting 0, pulled 0, failed 0"
    assert puts(moto, key) == before


def test_a_file_still_being_written_waits_for_the_settle_time(droplets) -> None:
    a, _ = droplets()
    a.write("fresh.jpg", b"half", age=0)
    result = a.sync()
    assert result.returncode == 0 and result.stdout.strip().startswith("pushed 0, waiting 1")


def test_a_changed_file_is_pushed_again_and_replaces_the_others_copy(droplets) -> None:
    a, b = droplets()
    a.write("logo.png", b"v1")
    assert a.sync().returncode == 0 and b.sync().returncode == 0
    a.write("logo.png", b"version two", age=2)
    assert a.sync().stdout.startswith("pushed 1")
    assert b.sync().stdout.strip() == "pushed 0, waiting 0, pulled 1, failed 0"
    assert (b.uploads / "logo.png").read_bytes() == b"version two"


def test_a_lost_index_uploads_nothing_already_stored(moto: Moto, droplets) -> None:
    a, _ = droplets()
    a.write("2026/11/a.jpg", b"aaa")
    assert a.sync().returncode == 0
    a.index.unlink()
    again = a.sync()
    assert again.stdout.strip() == "pushed 0, waiting 0, pulled 0, failed 0", again.stderr
    assert puts(moto, f"{droplets.prefix}/media/2026/11/a.jpg") == 1


def test_deletions_are_not_propagated(moto: Moto, droplets) -> None:
    a, b = droplets()
    a.write("keep.jpg", b"keep")
    assert a.sync().returncode == 0 and b.sync().returncode == 0
    (b.uploads / "keep.jpg").unlink()
    assert b.sync().stdout.strip() == "pushed 0, waiting 0, pulled 1, failed 0"
    assert (b.uploads / "keep.jpg").read_bytes() == b"keep"
    moto.client.head_object(Bucket=BUCKET, Key=f"{droplets.prefix}/media/keep.jpg")


def test_dotfiles_temp_files_and_symlinks_stay_local(moto: Moto, droplets) -> None:
    a, _ = droplets()
    a.write(".htaccess", b"deny")
    a.write("big.mp4.part", b"partial")
    (a.uploads / "passwd.jpg").symlink_to("/etc/passwd")
    assert a.sync().stdout.strip() == "pushed 0, waiting 0, pulled 0, failed 0"
    listed = moto.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{droplets.prefix}/")
    assert listed.get("KeyCount", 0) == 0


def test_a_corrupted_object_is_refused_and_nothing_is_left(moto: Moto, droplets) -> None:
    a, b = droplets()
    a.write("2026/11/fine.jpg", b"fine")
    assert a.sync().returncode == 0
    key = f"{droplets.prefix}/media/2026/11/forged.jpg"
    moto.client.put_object(
        Bucket=BUCKET, Key=key, Body=b"not these bytes", Metadata={"sha256": sha(b"original")}
    )
    result = b.sync()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "corrupt object, not written" in lines[0]
    assert result.stdout.strip() == "pushed 0, waiting 0, pulled 1, failed 1"
    assert not (b.uploads / "2026" / "11" / "forged.jpg").exists()
    assert (b.uploads / "2026" / "11" / "fine.jpg").read_bytes() == b"fine"
    assert b.leftovers() == []
    assert SECRET not in result.stdout + result.stderr
    again = b.sync()  # refused every time, never half-written
    assert again.returncode == 1 and key in again.stderr and b.leftovers() == []


def test_keys_that_would_escape_the_uploads_folder_are_ignored(moto: Moto, droplets) -> None:
    _, b = droplets()
    body = b"x"
    for rest in ("../escape.jpg", "a//b.jpg", ".hidden/x.jpg"):
        moto.client.put_object(
            Bucket=BUCKET,
            Key=f"{droplets.prefix}/media/{rest}",
            Body=body,
            Metadata={"sha256": sha(body)},
        )
    result = b.sync()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pushed 0, waiting 0, pulled 0, failed 0"
    assert list(b.uploads.iterdir()) == [] and not (b.base / "escape.jpg").exists()


def test_an_unreachable_s3_fails_sync_with_one_line(droplets) -> None:
    a, _ = droplets(max_attempts=1, connect_timeout=1)
    text = a.conf.read_text()
    a.conf.write_text(text.replace("http://127.0.0.1:", "http://127.0.0.1:1#"))
    a.write("x.jpg", b"x")
    result = a.sync()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "push x.jpg",
        f"list {droplets.prefix}/media/",
    ]
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_config_renders_as_toml_and_others_may_not_read_it(droplets) -> None:
    a, _ = droplets()
    parsed = tomllib.loads(a.conf.read_text())
    assert parsed["secret_key"] == SECRET and parsed["settle"] == 1.0
    assert parsed["push_interval"] == 1.0 and parsed["pull_interval"] == 2.0
    a.conf.chmod(0o644)
    result = a.sync()
    assert result.returncode != 0 and "make it mode 0600" in result.stderr


# --- run ----------------------------------------------------------------------------------


@pytest.fixture
def running() -> Iterator[Callable[[Droplet], subprocess.Popen]]:
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(d: Droplet) -> subprocess.Popen:
        log = d.base / "agent.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                d.command("run"), stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        procs.append((proc, log))
        return proc

    yield start
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, log in procs:
        assert proc.wait(timeout=30) == 0, log.read_text()
        text = log.read_text()
        assert "Traceback" not in text and SECRET not in text, text


def test_run_loops_carry_a_new_upload_to_the_other_droplet_within_10_s(
    moto: Moto, droplets, running
) -> None:
    a, b = droplets()
    running(a)
    running(b)
    data = os.urandom(50_000)
    a.write("2026/11/live.jpg", data, age=0)  # as WordPress writes it: now
    wait_for(
        lambda: (b.uploads / "2026/11/live.jpg").exists(),
        "2026/11/live.jpg on the second droplet",
        timeout=10,
    )
    assert (b.uploads / "2026/11/live.jpg").read_bytes() == data
    # And back the other way, while both loops run.
    b.write("2026/12/reply.png", b"reply", age=0)
    wait_for(lambda: (a.uploads / "2026/12/reply.png").exists(), "reply.png on web-1", 10)
    assert (a.uploads / "2026/12/reply.png").read_bytes() == b"reply"
    # Several rounds of both loops later, each object was put once.
    key = f"{droplets.prefix}/media/2026/11/live.jpg"
    wait_for(lambda: a.index.exists() and b.index.exists(), "both indexes saved", 10)
    assert b.sync().stdout.strip() == "pushed 0, waiting 0, pulled 0, failed 0"
    assert puts(moto, key) == 1


def test_run_survives_an_s3_outage_and_stops_on_sigterm(moto: Moto, droplets, running) -> None:
    a, b = droplets(connect_timeout=1, read_timeout=1, max_attempts=1)
    pa, pb = running(a), running(b)
    with moto.stopped():
        a.write("during-outage.jpg", b"x", age=0)
        wait_for(
            lambda: "during-outage.jpg" in (a.base / "agent.log").read_text(),
            "web-1 logging its failed push",
            timeout=20,
        )
    wait_for(lambda: (b.uploads / "during-outage.jpg").exists(), "the file after the outage", 20)
    assert pa.poll() is None and pb.poll() is None
    pa.send_signal(signal.SIGTERM)
    assert pa.wait(timeout=30) == 0
    assert "stopped" in (a.base / "agent.log").read_text()


# --- the unit -----------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: apt-get install -y systemd")
    unit = tmp_path / "lifeboat-media.service"
    uploads = "/var/www/lifeboat/uploads"
    unit.write_text(render("wordpress/lifeboat-media.service.j2", uploads_dir=uploads))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and lines == [], lines
    text = unit.read_text()
    assert (
        f"ExecStart={PYTHON} {DESTINATIONS['wordpress/media_agent.py'][0]} "
        f"--config {DESTINATIONS['wordpress/media.conf.j2'][0]} --dir {uploads} "
    ) in text
    assert text.rstrip().splitlines()[0].startswith("#")
    for directive in ("Type=notify", "Restart=always", f"ReadWritePaths={uploads}"):
        assert directive in text
