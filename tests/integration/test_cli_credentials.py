"""The CLI against real credentials blocks (a throwaway Prefect server) and APIs that do not
answer or refuse (loopback only): one line saying what to change, exit code 2, no
traceback, before any run starts. And a runbook that fails in a real flow run: its message,
where the log is, exit code 1, no traceback on the console (the flow run's log keeps it)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity
from lifeboat import cli
from tests.unit.test_cli import IDS, SPEC_COMMANDS, invoke, refused

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "examples" / "compact.yaml")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_blocks(api_url: str) -> str:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    DigitalOceanCredentials(
        token=SecretStr("dop_v1_test"), api_url=api_url, local_cloud=api_url.startswith("http:")
    ).save(name)
    SpacesCredentials(access_key="a", secret_key="s", region="nyc3").save(name)
    SSHIdentity(private_key="k", public_key="ssh-ed25519 AAAAC3Nz test").save(name)
    return name


@pytest.fixture(scope="module")
def refusing_api() -> Iterator[str]:
    """A DigitalOcean API stand-in on loopback that answers every request 401."""

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps({"id": "unauthorized", "message": "Unable to authenticate you"})
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_unknown_credentials_name(command: list[str], prefect_server: None) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    lines = refused(invoke(*command, "--spec", SPEC, "--credentials", name))
    assert lines == [
        f"error: no Lifeboat DigitalOcean Credentials block named {name!r}: save the "
        f"credentials blocks under {name!r} (the local cloud: `lifeboat lab up` saves 'lab', "
        f"`lifeboat lab blocks --name {name}` any name; DigitalOcean: README, "
        '"Credentials"), or pass --credentials with the name of blocks you saved; nothing '
        "was created"
    ]


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_unreachable_api(command: list[str], prefect_server: None) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    name = save_blocks(url)
    refused(
        invoke(*command, "--spec", SPEC, "--credentials", name),
        f"cannot reach the DigitalOcean API at {url} (connection refused): check api_url in "
        f"the DigitalOcean credentials block {name!r}",
    )


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_refusing_api(command: list[str], refusing_api: str, prefect_server: None) -> None:
    name = save_blocks(refusing_api)
    refused(
        invoke(*command, "--spec", SPEC, "--credentials", name),
        f"the DigitalOcean API at {refusing_api} rejected the API token (401 Unauthorized): "
        f"put a valid token in the DigitalOcean credentials block {name!r}",
    )


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_local_cloud_down(
    command: list[str], prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks that point at the local cloud's API while it is down (a closed port stands in
    for the lab's address: the real local cloud is not touched)."""
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(cli, "_lab_api_url", lambda: url)
    name = save_blocks(url)
    assert refused(invoke(*command, "--spec", SPEC, "--credentials", name)) == [
        f"error: the local cloud is down (its API at {url} does not answer): run `lifeboat lab up`"
    ]


def test_unreachable_prefect_api(prefect_server: None) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    url = f"http://127.0.0.1:{closed_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        result = invoke("status", "--spec", SPEC, "--credentials", "lab")
    refused(
        result,
        f"cannot reach the Prefect API at {url} (connection refused): start it",
        "PREFECT_API_URL",
    )


# --- a runbook that fails in a real flow run ----------------------------------------------

FAILING = """
import sys
from prefect import flow, task
import flows.status
from lifeboat import cli

class HAProxyError(RuntimeError):
    pass

@task
def check_backends():
    raise HAProxyError("haproxy compact-web-1: no backend UP for primary: check Patroni")

@flow(name="status")
def failing(spec, credentials):
    check_backends()

flows.status.stack_status = failing
cli._blocks = lambda credentials: None
sys.argv = ["lifeboat", *sys.argv[1:]]
cli.app()
"""


def run_failing(*args: str) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("LIFEBOAT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", FAILING, *args, "status", "--spec", SPEC],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_failing_runbook_is_one_line_and_the_log_keeps_the_traceback(
    prefect_server: None,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    run = run_failing()
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: haproxy compact-web-1: no backend UP for primary: check Patroni"], (
        run.stderr
    )
    where = re.search(
        r"^full log: Prefect flow run '[^']+' \(([0-9a-f-]{36})\): ", run.stderr, re.M
    )
    assert where, run.stderr
    assert f"`prefect flow-run logs {where[1]}`" in run.stderr
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[where[1]])))
    assert any("Traceback" in log.message for log in logs), [log.message for log in logs]


def test_a_failing_runbook_with_debug_shows_the_traceback(prefect_server: None) -> None:
    run = run_failing("--debug")
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "HAProxyError" in run.stderr


def test_a_runbook_that_succeeds_prints_its_result(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_run` hands back the flow's own return value (here a dict, as `status --json`)."""
    from prefect import flow

    import flows.status

    marker = object()

    @flow(name="status")
    def fine(spec: object, credentials: str) -> dict:
        return {"stack": "compact", "ok": True, "same": marker}

    monkeypatch.setattr(flows.status, "stack_status", fine)
    monkeypatch.setattr(cli, "_blocks", lambda credentials: None)
    from blocks.stack import StackSpec

    assert cli._run(fine, StackSpec.from_yaml(SPEC), "lab")["same"] is marker
    result = invoke("status", "--spec", SPEC, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True
