"""The CLI's answers to bad input (issue 14): one line per problem on stderr saying what to
change, exit code 2, no traceback; a failing runbook: its message and where the log is,
exit code 1. No Prefect server and no local cloud here: everything that would reach one is
replaced (tests/integration/test_cli_credentials.py has the blocks and the APIs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from lifeboat import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Every command that takes --spec.
SPEC_COMMANDS = [
    ["up"],
    ["wordpress"],
    ["backup"],
    ["backup-health"],
    ["serve"],
    ["provision"],
    ["status"],
    ["drill", "restore"],
    ["deploy"],
    ["recover", "switchover"],
    ["recover", "after-failover"],
    ["recover", "replace", "--member", "x-db-1"],
    ["recover", "undelete", "--since", "2026-11-30T14:02:00Z"],
    ["destroy", "--confirm", "compact"],
]
IDS = ["-".join(c[:2]) for c in SPEC_COMMANDS]


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:  # noqa: ANN401
    return CliRunner().invoke(cli.app, list(args), env=env)


def refused(result: Any, *fragments: str, code: int = 2) -> list[str]:  # noqa: ANN401
    """The run ended with `code`, nothing on stdout, no traceback, and each of `fragments`
    in the one error line on stderr; the stderr lines are returned."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error: "), lines
    if code == 2:  # bad input: nothing but what to change
        assert all(line.startswith("error: ") for line in lines), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines)
    return lines


@pytest.fixture(autouse=True)
def _no_prefect_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Prefect server here: a test that gets past the spec must not reach one (and a
    slip fails against a closed port instead of starting a temporary server)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def fail(credentials: str) -> None:
        raise AssertionError("the spec should have been refused before the credentials")

    monkeypatch.setattr(cli, "_blocks", fail)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        yield


# --- the spec file ----------------------------------------------------------------------


def compact_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (EXAMPLES / "compact.yaml").read_text()
    assert old in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_missing_spec(command: list[str], tmp_path: Path) -> None:
    result = invoke(*command, "--spec", str(tmp_path / "nope.yaml"))
    refused(result, "nope.yaml: no such file", "e.g. examples/compact.yaml")


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_spec_is_a_directory(command: list[str]) -> None:
    refused(invoke(*command, "--spec", str(EXAMPLES)), "examples: is a directory")


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_unreadable_spec(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("name: x\n")
    path.chmod(0)
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # root reads a mode-0 file: deny it as for a user
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    refused(invoke(*command, "--spec", str(path)), "secret.yaml: permission denied", "readable")


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_spec_not_utf8(command: list[str], tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: shop\nregion: nyc3 # caf\u00e9\n".encode("latin-1"))
    refused(
        invoke(*command, "--spec", str(path)),
        "latin1.yaml: line 2, column 19: not UTF-8 (byte 0xe9)",
        "save the file as UTF-8",
    )


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_spec_yaml_syntax_error(command: list[str], tmp_path: Path) -> None:
    path = compact_with(tmp_path, "region: nyc3\n", "region: [nyc3\n")
    lines = refused(invoke(*command, "--spec", str(path)), "spec.yaml: line ", "not valid YAML")
    assert len(lines) == 1


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_spec_duplicate_key(command: list[str], tmp_path: Path) -> None:
    path = compact_with(tmp_path, "region: nyc3\n", "region: nyc3\nregion: fra1\n")
    refused(
        invoke(*command, "--spec", str(path)),
        "spec.yaml: line 5, column 1:",
        "key 'region' given twice (first on line 4): keep one",
    )


@pytest.mark.parametrize("confirm", [[], ["--confirm", "article"], ["--confirm", ""]])
def test_destroy_needs_the_stack_name_confirmed(confirm: list[str]) -> None:
    """Refused before the credentials are read (the fixture fails any run that gets there)."""
    spec = str(EXAMPLES / "compact.yaml")
    refused(invoke("destroy", "--spec", spec, *confirm), "--confirm compact", "kept")


def test_spec_duplicate_key_deep_down(tmp_path: Path) -> None:
    path = compact_with(tmp_path, "    count: 3\n", "    count: 3\n    count: 5\n")
    refused(invoke("status", "--spec", str(path)), "key 'count' given twice")


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ("- a\n- b\n", "expected a mapping at the top level")],
    ids=["empty", "a-list"],
)
def test_spec_not_a_mapping(command: list[str], text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    refused(invoke(*command, "--spec", str(path)), f"spec.yaml: {message}")


@pytest.mark.parametrize("command", SPEC_COMMANDS, ids=IDS)
def test_invalid_spec_one_line_per_problem(command: list[str], tmp_path: Path) -> None:
    path = compact_with(tmp_path, "region: nyc3\n", "regoin: nyc3\n")
    path.write_text(path.read_text().replace("count: 3", "count: 0", 1))
    lines = refused(invoke(*command, "--spec", str(path)))
    assert sorted(lines) == [
        "error: " + str(path) + ": groups.0.count: Input should be greater than or equal to 1",
        "error: " + str(path) + ": region: missing: add it (see examples/compact.yaml)",
        "error: " + str(path) + ": regoin: not a key Lifeboat knows (a typo?): remove or rename it",
    ]


@pytest.mark.parametrize("word", ["user", "select", "left"])
def test_reserved_word_as_db_user_is_refused_naming_it(word: str, tmp_path: Path) -> None:
    path = compact_with(tmp_path, "  source: release\n", f"  source: release\n  db_user: {word}\n")
    refused(
        invoke("up", "--spec", str(path)),
        f"wordpress.db_user: '{word}' is a reserved word in PostgreSQL 15",
        "choose another name",
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("wordpress", "db_name", "table", "'table' is a reserved word in PostgreSQL 15"),
        ("patroni", "replication_user", "all", "'all' is a reserved word in PostgreSQL 15"),
        ("patroni", "rewind_user", "public", "'public' is a role name PostgreSQL reserves"),
        ("patroni", "superuser", "pg_admin", "'pg_admin' is a role name PostgreSQL reserves"),
        ("patroni", "restapi_user", "a b", "use letters, digits"),
        ("wordpress", "db_user", "replicator", "'replicator' is also patroni.replication_user"),
        ("patroni", "superuser", "lifeboat_routing", "is also Lifeboat's routing check role"),
    ],
)
def test_sql_names_are_checked(
    section: str, key: str, value: str, message: str, tmp_path: Path
) -> None:
    text = (EXAMPLES / "compact.yaml").read_text()
    if section == "wordpress":  # the example has this section: add the key to it
        text = text.replace("  source: release\n", f"  source: release\n  {key}: '{value}'\n")
    else:
        text += f"{section}:\n  {key}: '{value}'\n"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    lines = refused(invoke("status", "--spec", str(path)))
    assert f"{section}.{key}" in lines[0] and message in lines[0], lines


# --- a failing runbook --------------------------------------------------------------------


class FailingFlow:
    """Stands in for a Prefect flow called with return_state=True, whose run failed."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, *args: object, return_state: bool = False) -> SimpleNamespace:
        assert return_state

        def result() -> None:
            raise self.error

        return SimpleNamespace(
            result=result, state_details=SimpleNamespace(flow_run_id="0b5e7c1a-run")
        )


class HAProxyError(RuntimeError):
    pass


class FinishedFlow:
    """Stands in for a Prefect flow called with return_state=True, whose run completed."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __call__(self, *args: object, return_state: bool = False) -> SimpleNamespace:
        assert return_state
        return SimpleNamespace(result=lambda: self.value)


def _report(ok: bool) -> dict:
    return {
        "stack": "compact",
        "ok": ok,
        "droplets": [],
        "missing_droplets": [] if ok else ["compact-db-2"],
        "etcd": {"ok": ok},
        "patroni": {"ok": ok},
        "haproxy": {},
        "backups": {},
    }


@pytest.mark.parametrize(("ok", "code"), [(True, 0), (False, 1)], ids=["healthy", "not-healthy"])
def test_status_exits_non_zero_when_the_stack_is_not_healthy(
    monkeypatch: pytest.MonkeyPatch, ok: bool, code: int
) -> None:
    import flows.status

    monkeypatch.setattr(cli, "_blocks", lambda credentials: None)
    monkeypatch.setattr(flows.status, "stack_status", FinishedFlow(_report(ok)))
    result = invoke("status", "--spec", str(EXAMPLES / "compact.yaml"), "--json")
    assert result.exit_code == code, (result.output, result.exception)
    assert json.loads(result.stdout)["ok"] is ok  # the report is printed either way
    assert "error" not in result.stderr  # a verdict, not a failure


@pytest.fixture
def failing_status(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.status

    monkeypatch.setattr(cli, "_blocks", lambda credentials: None)
    monkeypatch.setattr(cli, "_quiet_console", lambda: None)

    def no_server(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError(111, "no Prefect server in unit tests")

    monkeypatch.setattr("prefect.client.orchestration.get_client", no_server)
    error = HAProxyError("haproxy web-1: no backend UP for primary\n(check Patroni)")
    monkeypatch.setattr(flows.status, "stack_status", FailingFlow(error))


def test_a_failing_runbook_says_its_error_and_where_the_log_is(failing_status: None) -> None:
    result = invoke("status", "--spec", str(EXAMPLES / "compact.yaml"))
    assert refused(result, code=1) == [
        "error: haproxy web-1: no backend UP for primary | (check Patroni)",
        "full log: Prefect flow run 0b5e7c1a-run: `prefect flow-run logs 0b5e7c1a-run`",
    ]


@pytest.mark.parametrize(
    ("option", "env"), [(["--debug"], {}), ([], {"LIFEBOAT_DEBUG": "1"})], ids=["option", "env"]
)
def test_debug_shows_the_traceback(
    failing_status: None, option: list[str], env: dict[str, str]
) -> None:
    result = invoke(*option, "status", "--spec", str(EXAMPLES / "compact.yaml"), env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, HAProxyError)  # raised, not turned into a line


def test_keyboard_interrupt_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.status

    monkeypatch.setattr(cli, "_blocks", lambda credentials: None)
    monkeypatch.setattr(flows.status, "stack_status", FailingFlow(KeyboardInterrupt()))  # type: ignore[arg-type]
    result = invoke("status", "--spec", str(EXAMPLES / "compact.yaml"))
    assert result.exit_code == 130  # typer's answer to Ctrl-C, not ours
    assert "error:" not in result.output


def test_an_unexpected_error_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(credentials: str) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_blocks", boom)
    result = invoke("status", "--spec", str(EXAMPLES / "compact.yaml"))
    refused(result, "division by zero", code=1)
    assert "--debug" in result.stderr


# --- the local cloud ------------------------------------------------------------------------


@pytest.fixture
def lab_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The local cloud's files point into an empty folder; nothing may reach the real one."""
    from lab import config, faults, lifecycle

    for module in (config, lifecycle):
        monkeypatch.setattr(module, "LAB_FILE", tmp_path / "lab.json")
    monkeypatch.setattr(lifecycle, "TOKEN_FILE", tmp_path / "api-token")
    monkeypatch.setattr(lifecycle, "API_URL", "http://127.0.0.1:9")  # discard: refused

    def untouchable(*args: object) -> None:
        raise AssertionError("the real local cloud was reached")

    for name in (
        "partition",
        "heal",
        "power_off",
        "power_on",
        "s3_outage",
        "s3_restore",
        "find_droplet",
    ):
        monkeypatch.setattr(faults, name, untouchable)
    for name in ("up", "down", "info"):
        monkeypatch.setattr(lifecycle, name, untouchable)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    return tmp_path


LAB_COMMANDS = [
    ["partition", "compact-db-1"],
    ["partition", "compact-db-1", "--from", "compact-db-2"],
    ["heal", "compact-db-1"],
    ["power-off", "compact-db-1"],
    ["power-on", "compact-db-1"],
    ["s3-outage"],
    ["s3-restore"],
    ["blocks", "--name", "mine"],
]
LAB_IDS = [
    "partition",
    "partition-from",
    "heal",
    "power-off",
    "power-on",
    "s3-outage",
    "s3-restore",
    "blocks",
]
API_IDS = [i for i in LAB_IDS if not i.startswith("s3")]  # what needs the lab's API
API_COMMANDS = [c for i, c in zip(LAB_IDS, LAB_COMMANDS, strict=True) if i in API_IDS]


@pytest.mark.parametrize("command", LAB_COMMANDS, ids=LAB_IDS)
def test_lab_commands_say_the_lab_is_down(command: list[str], lab_down: Path) -> None:
    refused(invoke("lab", *command), "the local cloud is down: run `lifeboat lab up`")


@pytest.mark.parametrize("command", API_COMMANDS, ids=API_IDS)
def test_lab_commands_say_its_api_does_not_answer(command: list[str], lab_down: Path) -> None:
    (lab_down / "lab.json").write_text("{}")
    (lab_down / "api-token").write_text("t")
    refused(
        invoke("lab", *command),
        "the local cloud's API at http://127.0.0.1:9 does not answer",
        "run `lifeboat lab up`",
    )


def test_lab_needs_root(lab_down: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    for command in (["up"], ["status"], ["down"], *LAB_COMMANDS):
        refused(invoke("lab", *command), "the local cloud needs root: run this as root")


def test_lab_status_half_up_is_down_without_traceback(
    lab_down: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lab import lifecycle

    def api_gone() -> dict:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(lifecycle, "info", api_gone)
    result = invoke("lab", "status")
    assert result.exit_code == 1
    assert result.stdout.strip() == (
        "lab: down (its API does not answer (ConnectionRefusedError)): run `lifeboat lab up`"
    )


@pytest.mark.parametrize(
    ("args", "unknown"),
    [(["ghost"], "ghost"), (["compact-db-1", "--from", "ghost"], "ghost")],
    ids=["droplet", "peer"],
)
def test_lab_fault_on_an_unknown_droplet(
    args: list[str], unknown: str, lab_down: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lab import faults, lifecycle

    (lab_down / "lab.json").write_text("{}")
    (lab_down / "api-token").write_text("t")
    monkeypatch.setattr(lifecycle, "_api_answers", lambda token: True)

    def lookup(name: str, peers: list[str] | None = None) -> dict:
        missing = next(n for n in [name, *(peers or [])] if n == unknown)
        raise LookupError(f"0 droplets are named {missing!r}; give an id instead")

    monkeypatch.setattr(faults, "partition", lookup)
    refused(
        invoke("lab", "partition", *args),
        f"no droplet is named '{unknown}': `lifeboat lab status` lists them",
    )


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("yesterday", "is not an ISO 8601 time"),
        ("2026-11-30T14:02:00", "has no time zone: add one, e.g. 2026-11-30T14:02:00Z"),
    ],
)
def test_a_bad_target_time_is_refused_before_the_spec_is_read(when: str, message: str) -> None:
    result = invoke("drill", "restore", "--spec", "/nonexistent.yaml", "--target-time", when)
    refused(result, message)


@pytest.mark.parametrize("command", ["deploy", "serve"])
def test_deployments_without_a_server_say_how_to_start_one(command: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = invoke(command, "--spec", str(EXAMPLES / "compact.yaml"))
    refused(result, "no Lifeboat server is running", "`lifeboat server start`")


def test_undelete_needs_a_moment_with_its_time_zone() -> None:
    spec = str(EXAMPLES / "compact.yaml")
    refused(
        invoke("recover", "undelete", "--spec", spec, "--since", "2026-11-30T14:02"),
        "--since '2026-11-30T14:02' has no time zone",
    )
    refused(
        invoke("recover", "undelete", "--spec", spec, "--since", "yesterday"),
        "--since 'yesterday' is not an ISO 8601 time",
    )


@pytest.mark.parametrize(
    ("source", "when", "message"),
    [
        (
            "compact",
            "2026-11-30T14:02:00Z",
            "--from compact is the stack in --spec: restore into a new stack with a name of "
            "its own",
        ),
        ("article", "2026-11-30T14:02", "--target-time '2026-11-30T14:02' has no time zone"),
    ],
)
def test_restore_cluster_refuses_its_own_source_and_a_time_without_zone(
    source: str, when: str, message: str
) -> None:
    spec = str(EXAMPLES / "compact.yaml")
    refused(
        invoke(
            "recover", "restore-cluster", "--spec", spec, "--from", source, "--target-time", when
        ),
        message,
    )
