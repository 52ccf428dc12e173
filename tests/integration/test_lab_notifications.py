"""The lab's notification receiver (lab/notify_receiver.py) as a real process on loopback,
with a free port and temporary files, so a lab that is up on this machine is not touched;
and Prefect's webhook block, as `lab blocks` saves it, notifying through it."""

from __future__ import annotations

import http.client
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from lab import config, notifications, notify_receiver, processes
from lab.credentials import notification_block
from lifeboat.cli import _notification_line
from lifeboat.waiting import wait_until
from tests.integration.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Receiver:
    port: int
    file: Path
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def listed(self) -> list[dict]:
        status, data = self.request("GET", "/notifications")
        assert status == 200
        return json.loads(data)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        conn.request("GET", "/notifications")
        return conn.getresponse().status == 200
    except OSError:
        return False


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    port = free_port()
    file = tmp_path / "notifications.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.notify_receiver",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--file",
            str(file),
            "--pid-file",
            str(tmp_path / "notify.pid"),
        ],
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        wait_until(
            "the receiver", lambda: proc.poll() is None and _answers(port), timeout=30, every=0.05
        )
        yield Receiver(port, file, proc.pid)
    finally:
        processes.kill([proc.pid])
        assert not processes.alive(proc.pid)


def test_records_json_and_text_bodies_in_order(receiver: Receiver) -> None:
    assert receiver.listed() == []
    assert notify_receiver.read(receiver.file) == []  # no file yet
    before = time.time()
    sent = {"subject": "drill failed", "body": "restore drill: RPO 40 s > 30 s"}
    assert receiver.request("POST", "/notify", json.dumps(sent).encode(), "application/json") == (
        204,
        b"",
    )
    assert receiver.request("POST", "/notify", b"plain words\nline two", "text/plain")[0] == 204
    assert receiver.request("POST", "/notify?via=query", b"\xff not utf-8 {")[0] == 204
    assert receiver.request("POST", "/notify")[0] == 204  # no body at all

    listed = receiver.listed()
    assert [(n["content_type"], n["body"]) for n in listed] == [
        ("application/json", sent),
        ("text/plain", "plain words\nline two"),
        (None, "\ufffd not utf-8 {"),
        (None, ""),
    ]
    times = [n["received_at"] for n in listed]
    assert before <= times[0] <= times[-1] <= time.time()
    assert times == sorted(times)
    # One JSON line per notification, flushed: the file says what GET says.
    assert len(receiver.file.read_text().splitlines()) == 4
    assert notify_receiver.read(receiver.file) == listed


def test_received_reads_the_file(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifications, "FILE", receiver.file)
    assert notifications.received() == []
    receiver.request("POST", "/notify", b'{"a": [1, 2]}', "application/json")
    receiver.request("POST", "/notify", b"42")  # JSON, whatever the content type says
    assert [n["body"] for n in notifications.received()] == [{"a": [1, 2]}, 42]
    assert notifications.received() == receiver.listed()


def test_anything_else_is_not_found(receiver: Receiver) -> None:
    for method, path in [
        ("GET", "/notify"),
        ("GET", "/"),
        ("GET", "/notifications/1"),
        ("POST", "/notifications"),
        ("POST", "/other"),
        ("PUT", "/notify"),
        ("DELETE", "/notifications"),
    ]:
        assert receiver.request(method, path, b"x" if method != "GET" else None)[0] == 404, path
    assert receiver.listed() == []


def test_the_lab_block_notifies_subject_and_body(receiver: Receiver) -> None:
    block = notification_block(receiver.url)  # the block `lab blocks` saves, in memory
    block.notify("Restore drill failed\nRPO 40 s over the 30 s target", "lifeboat: drill")
    block.notify("no subject")

    first, second = receiver.listed()
    assert first["content_type"] == "application/json"
    assert first["body"] == {
        "subject": "lifeboat: drill",
        "body": "Restore drill failed\nRPO 40 s over the 30 s target",
    }
    assert second["body"] == {"subject": "null", "body": "no subject"}  # Prefect's "null"
    # What `lifeboat lab notifications` prints: time, subject, first line of the body.
    assert _notification_line(first).endswith(" lifeboat: drill: Restore drill failed")


def test_the_saved_block_loads_and_notifies(receiver: Receiver, prefect_server: object) -> None:
    notification_block(receiver.url, "lab-notify-test").save("lab-notify-test", overwrite=True)
    loaded = CustomWebhookNotificationBlock.load("lab-notify-test")
    assert loaded.url == receiver.url
    loaded.notify("a failover happened", "lifeboat: failover")
    assert [n["body"] for n in receiver.listed()] == [
        {"subject": "lifeboat: failover", "body": "a failover happened"}
    ]


def test_start_is_up_and_a_running_receiver_is_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lab/notifications.py's own start, on loopback instead of the lab gateway."""
    monkeypatch.setattr(config, "GATEWAY", ipaddress.ip_address("127.0.0.1"))
    monkeypatch.setattr(config, "NOTIFY_PORT", free_port())
    for name, file in (("PID_FILE", "notify.pid"), ("LOG_FILE", "notify.log")):
        monkeypatch.setattr(notifications, name, tmp_path / file)
    monkeypatch.setattr(notifications, "FILE", tmp_path / "notifications.jsonl")
    assert not notifications.is_up()
    try:
        notifications.start()
        assert notifications.is_up()
        pid = int(notifications.PID_FILE.read_text())
        assert str(notifications.PID_FILE) in processes.cmdline(pid)  # `lab down`'s marker
        notifications.start()
        assert int(notifications.PID_FILE.read_text()) == pid
        assert notifications.url() == f"http://127.0.0.1:{config.NOTIFY_PORT}/notify"
        notification_block(notifications.url()).notify("it works", "lab")
        assert [n["body"] for n in notifications.received()] == [
            {"subject": "lab", "body": "it works"}
        ]
    finally:
        if pid := processes.read_pid(notifications.PID_FILE, "lab.notify_receiver"):
            processes.kill([pid])
    assert not notifications.is_up()
