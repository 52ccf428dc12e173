"""The `lifeboat` command.

Bad input (the spec file, the credentials blocks, an API that does not answer or refuses,
a local cloud that is down) ends in one line per problem on stderr saying what to change,
exit code 2. A runbook that fails ends in `error: <its message>` and where its full log is,
exit code 1. `--debug` (or LIFEBOAT_DEBUG=1) shows tracebacks instead. No traceback
otherwise; Ctrl-C still interrupts.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer

# No network but the registries here; Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# No locals in a traceback (--debug): they would show tokens and keys.
app = typer.Typer(
    help="Lifeboat: disaster-recovery runbooks for WordPress on Patroni.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
lab_app = typer.Typer(
    help="The local cloud: DigitalOcean on one machine (needs root).", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")
drill_app = typer.Typer(
    help="Drills: prove that the backups restore and the cluster fails over.", no_args_is_help=True
)
app.add_typer(drill_app, name="drill")
recover_app = typer.Typer(
    help="Recovery runbooks: switchover, reinit a member, after a failover.",
    no_args_is_help=True,
)
app.add_typer(recover_app, name="recover")
server_app = typer.Typer(
    help="A Prefect server that stays up: every lifeboat command records its runs there.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")

SPEC = typer.Option(..., "--spec", help="Stack spec (YAML), e.g. examples/article.yaml.")
CREDENTIALS = typer.Option(
    "lab",
    "--credentials",
    help="Name of the credentials blocks to use (`lifeboat lab blocks` saves the local "
    "cloud's as `lab`).",
)
GUIDE_SPEC = typer.Option(
    None, "--spec", help="Also say where the stack's site is and what to click for it."
)
NOTIFY = typer.Option(
    None,
    "--notify",
    help="Notification block as <type slug>/<name> (e.g. custom-webhook/lab, which "
    "`lifeboat lab blocks` saves): failed runbooks, failovers and a missing backup reach it.",
)


_STATE: dict[str, Any] = {"debug": False, "server": None}


@app.callback()
def _main(
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar="LIFEBOAT_DEBUG",
        help="Show tracebacks (Lifeboat's and Prefect's) instead of one line per error.",
    ),
) -> None:
    _STATE["debug"] = debug
    from lifeboat import server

    # Before Prefect is imported: its settings are read then.
    _STATE["server"] = server.use_running()


def main() -> None:
    """The `lifeboat` command: run by the Lifeboat server's resident runner when one
    answers (lifeboat/resident.py: Prefect and the runbooks already imported), else here."""
    from lifeboat import resident

    code = resident.delegate(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    app(prog_name="lifeboat")


class BadInput(Exception):
    """Something the user gives or runs is wrong: each line says what to change (exit 2)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


class RunbookFailed(Exception):
    """A runbook (a Prefect flow) failed: its message, and the flow run that has the log."""

    def __init__(self, error: BaseException, flow_run_id: object) -> None:
        super().__init__(_one_line(error))
        self.flow_run_id = flow_run_id


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines) or type(exc).__name__


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; turn what it raises into the lines and exit codes above."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # typer's Exit is not click's: an exit code we chose, never an error
        except BadInput as exc:
            for line in exc.lines:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2) from None
        except RunbookFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            typer.echo(f"full log: {_where_logged(exc.flow_run_id)}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"error: {_one_line(exc)}", err=True)
            typer.echo("(`lifeboat --debug ...` shows the traceback)", err=True)
            raise typer.Exit(1) from None

    return run


def _command(group: typer.Typer, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`group.command(name)`, guarded."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        group.command(name)(_guarded(fn))
        return fn

    return register


def _where_logged(flow_run_id: object) -> str:
    """Where a flow run's full log is: the Prefect CLI command (and the UI, when a server
    with one is configured)."""
    where = f"Prefect flow run {flow_run_id}: `prefect flow-run logs {flow_run_id}`"
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import get_current_settings

        with get_client(sync_client=True) as client:
            name = client.read_flow_run(flow_run_id).name  # type: ignore[arg-type]
        where = f"Prefect flow run {name!r} ({flow_run_id}): `prefect flow-run logs {flow_run_id}`"
        ui = get_current_settings().ui_url
        if get_current_settings().api.url and ui:
            where += f" or {ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
    except Exception:  # noqa: BLE001 - the id alone still finds it
        pass
    return where


class _NoTraceback(logging.Formatter):
    """Prefect's console lines without the tracebacks (the flow run's log keeps them)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self._inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _quiet_console() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _NoTraceback
            ):
                handler.setFormatter(_NoTraceback(handler.formatter))


def _run(flow: Any, spec: Any, *args: Any) -> Any:  # noqa: ANN401 - a flow, a StackSpec
    """Run a runbook; its exception becomes RunbookFailed (with --debug: raised as is)."""
    if not _STATE["debug"]:
        _quiet_console()
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        typer.echo(
            "note: no Lifeboat server is running, so Prefect starts a temporary one for this "
            "command (`lifeboat server start` keeps one up, with its UI)",
            err=True,
        )
    from prefect import tags

    # Tagged as a deployed run is: the stack's automations (failure notices) see it too.
    with tags("lifeboat", f"stack:{spec.name}"):
        state = flow(spec, *args, return_state=True)
    try:
        return state.result()
    except Exception as exc:
        if _STATE["debug"]:
            raise
        raise RunbookFailed(exc, state.state_details.flow_run_id) from None


def _load_spec(path: Path):  # noqa: ANN202 - StackSpec, imported lazily
    from blocks.stack import SpecError, StackSpec

    try:
        return StackSpec.from_yaml(path)
    except SpecError as exc:
        raise BadInput(*exc.problems) from None


def _blocks(credentials: str) -> None:
    """Before any run starts: the credentials blocks named `credentials` exist (else say
    which is missing and how to save it) and the DigitalOcean API answers and accepts the
    token (else say where it was asked and what to check)."""
    from tasks.context import ClusterError, check_credentials
    from tasks.droplets import CloudError, Unreachable

    try:
        check_credentials(credentials)
    except Unreachable as exc:
        if exc.url == _lab_api_url():
            raise BadInput(
                f"the local cloud is down (its API at {exc.url} does not answer): run "
                "`lifeboat lab up`"
            ) from None
        raise BadInput(str(exc)) from None
    except (ClusterError, CloudError) as exc:
        raise BadInput(str(exc)) from None


def _lab_api_url() -> str:
    from lab.config import API_PORT, GATEWAY

    return f"http://{GATEWAY}:{API_PORT}"


@_command(app, "up")
def up_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Provision the stack's droplets and build its cluster (a rerun changes nothing)."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.up import up

    result = _run(up, stack, credentials)
    typer.echo(json.dumps(result, indent=2, default=str))


@_command(app, "wordpress")
def wordpress_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Roll the web tier out alone, one droplet at a time behind health gates."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.wordpress import wordpress

    result = _run(wordpress, stack, credentials)
    typer.echo(json.dumps(result, indent=2, default=str))


@_command(app, "backup")
def backup_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    wait: float = typer.Option(
        0, "--wait", help="Seconds to queue behind a running backup of the stack (0: refuse)."
    ),
) -> None:
    """A base backup to Spaces, cataloged, retention applied, WAL verified to now."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.backup import backup

    typer.echo(json.dumps(_run(backup, stack, credentials, wait), indent=2, default=str))


@_command(app, "backup-health")
def backup_health_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Fails when WAL archiving lags or the newest backup is older than the schedule allows."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.backup import backup_health

    result = _run(backup_health, stack, credentials)
    typer.echo(json.dumps(result, indent=2, default=str))


@_command(app, "serve")
def serve_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS, notify: str = NOTIFY) -> None:
    """Serve the stack's runbooks from this process until stopped: the deployments of
    deployments/prefect.yaml, scheduled ones on their schedules, one run at a time."""
    stack = _load_spec(spec)
    _need_server()
    _blocks(credentials)
    _save_spec_block(stack)
    from prefect import serve

    from flows.service import deployments

    _notifications(stack, notify)
    # limit=1: one runbook at a time touches the stack (the work queue's limit, when deployed).
    serve(*deployments(stack, credentials), limit=1, pause_on_shutdown=False)


@_command(app, "deploy")
def deploy_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS, notify: str = NOTIFY) -> None:
    """Register the stack's runbooks as deployments on the running server (`prefect deploy
    --all` with deployments/prefect.yaml); a process worker runs them:
    `prefect worker start --pool lifeboat`."""
    stack = _load_spec(spec)
    _need_server()
    _blocks(credentials)
    _save_spec_block(stack)
    from flows import service

    names = service.deploy(stack, credentials)
    typer.echo(f"deployed {len(names)} runbooks of stack {stack.name} to work pool lifeboat:")
    for name in names:
        typer.echo(f"  {name}")
    _notifications(stack, notify)


def _notifications(stack: Any, notify: str | None) -> None:  # noqa: ANN401 - StackSpec
    from flows import service

    if not notify:
        typer.echo("no --notify block: failures, failovers and missing backups notify no one")
        return
    try:
        for name in service.ensure_automations(stack, notify):
            typer.echo(f"automation: {name} -> {notify}")
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _need_server() -> None:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise BadInput(
            "no Lifeboat server is running, and deployments need one: `lifeboat server start`"
        )


def _save_spec_block(stack: Any) -> None:  # noqa: ANN401 - StackSpec, imported lazily
    """Store the spec as the block deployments name (`lifeboat-stack-spec/<name>`)."""
    from blocks.stack import StackSpecBlock

    StackSpecBlock(spec=stack).save(stack.name, overwrite=True)


@_command(server_app, "start")
def server_start(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (droplets post events to it)."
    ),
    port: int = typer.Option(4200, "--port"),
    worker: bool = typer.Option(
        True,
        "--worker/--no-worker",
        help="Also start a process worker on the lifeboat pool (runs deployed runbooks).",
    ),
    database_url: str = typer.Option(
        None,
        "--database-url",
        envvar="LIFEBOAT_SERVER_DATABASE_URL",
        help="PostgreSQL for Prefect's own database (default: SQLite in the state "
        "directory), e.g. postgresql+asyncpg://prefect:PASSWORD@db.example/prefect. "
        "Never the cluster Lifeboat recovers.",
    ),
) -> None:
    """Start a Prefect server that stays up (state in $LIFEBOAT_HOME, default ~/.lifeboat)."""
    from lifeboat import server

    was = server.running()
    try:
        info = server.start(host, port, database_url, worker)
    except server.ServerError as exc:
        raise BadInput(str(exc)) from None
    typer.echo(f"{'already running' if was else 'started'}: {_server_line(info)}")


@_command(server_app, "status")
def server_status(spec: Path = GUIDE_SPEC, credentials: str = CREDENTIALS) -> None:
    """Where the server is and whether it answers; exit 1 when none is running."""
    from lifeboat import server

    info = server.running()
    if info is None:
        typer.echo("no Lifeboat server is running: `lifeboat server start`")
        raise typer.Exit(1)
    typer.echo(f"running: {_server_line(info)}")
    if spec is not None:
        _guide(info, _load_spec(spec), credentials)


def _guide(info: Any, stack: Any, credentials: str) -> None:  # noqa: ANN401
    """The stack's addresses and what to click in the UI (the end of `make demo`)."""
    from tasks import wordpress as wp
    from tasks.context import opened

    with opened(stack, credentials) as ctx:
        lb = wp.load_balancer(ctx.do, stack)
    name = stack.name
    typer.echo(
        f"""
Prefect UI   {info.ui_url}
the site     http://{lb["ip"]}/  (Host: {stack.wordpress.site_domain(name)})
what to click
  Runs                        the runs of this demo: up, backup, failover and restore drills,
                              after-failover (started by the promotion event); each run's
                              Artifacts tab has its report
  Deployments > {name}-restore-drill > Run > Quick run      a restore drill, one click
  Deployments > {name}-failover-drill > Run > Custom run    choose the fault
  Automations                 the promotion trigger and the notifications
  Blocks                      the stack's spec, credentials and generated secrets
`lifeboat lab notifications` lists what the automations sent; `lifeboat server stop` ends it."""
    )


@_command(server_app, "stop")
def server_stop() -> None:
    """Stop the server; its database stays, and the next start carries on from it."""
    from lifeboat import server

    info = server.stop()
    typer.echo(f"stopped (pid {info.pid})" if info else "no Lifeboat server was running")


def _server_line(info: Any) -> str:  # noqa: ANN401 - server.ServerInfo
    from lifeboat import server

    worker = f"worker pid {info.worker_pid}" if server.worker_alive(info) else "no worker"
    return (
        f"UI {info.ui_url}, API {info.api_url}, pid {info.pid}, {worker}, database "
        f"{info.database}, state {server.home()}"
    )


@_command(app, "provision")
def provision_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Only the cloud resources: droplets, VPC, firewalls, load balancer, bucket."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.provision import provision

    for host in _run(provision, stack, credentials):
        typer.echo(
            f"{host.name:<28} {host.public_ip:<15} {host.private_ip:<15} {','.join(host.roles)}"
        )


@_command(app, "status")
def status_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """Droplets and roles, etcd health, Patroni members, HAProxy backends. Exits 1 when the
    stack is not healthy (the report is printed either way), so a script or a monitor can
    act on it."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.status import stack_status

    status = _run(stack_status, stack, credentials)
    typer.echo(json.dumps(status, indent=2, default=str) if as_json else _status_text(status))
    if not status["ok"]:
        raise typer.Exit(1)


@_command(drill_app, "restore")
def drill_restore_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    backup: str = typer.Option(
        None, "--backup", help="The backup's id (default: the newest in the catalog)."
    ),
    target_time: str = typer.Option(
        None,
        "--target-time",
        help="Restore to this moment (ISO 8601 with a time zone, e.g. 2026-11-30T14:02:00Z) "
        "instead of the archive's end.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """Restore a backup into a scratch droplet and prove it (marker, replay to the archive's
    end or a point in time, pg_amcheck, checksums, the site's rows); RTO and RPO reported;
    the scratch droplet is destroyed whatever happens."""
    when = _moment(target_time) if target_time is not None else None
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.drill import restore_drill

    report = _run(restore_drill, stack, credentials, backup, when)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    rpo = f"RPO {report['rpo_s']} s" if when is None else f"to {report['target_time']}"
    typer.echo(
        f"restore drill of {report['stack']}: passed; backup {report['backup']}, "
        f"RTO {report['rto_s']} s, {rpo}"
    )
    typer.echo(f"  replay: {report['replay']}")
    for name, outcome in report["checks"].items():
        typer.echo(f"  {name}: {outcome}")
    steps = ", ".join(f"{k} {v} s" for k, v in report["steps_s"].items())
    typer.echo(f"  steps: {steps}; total {report['total_s']} s")


@_command(drill_app, "failover")
def drill_failover_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    fault: str = typer.Option(
        "switchover",
        "--fault",
        help="switchover (planned), stop-patroni, kill-postgres, power-off, partition (the "
        "primary cut off from everything) or etcd-partition (from etcd only).",
    ),
    allow_destructive: bool = typer.Option(
        False, "--allow-destructive", help="Consent to a fault other than switchover."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """Fault the primary while a probe writes through HAProxy: write gap, acknowledged
    writes lost (must be 0), time to a new leader; the cluster put back and healthy."""
    from tasks.failover import DrillRefused, check_fault

    try:
        check_fault(fault, allow_destructive)
    except DrillRefused as e:
        raise BadInput(str(e)) from None
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.failover import failover_drill

    report = _run(failover_drill, stack, credentials, fault, allow_destructive)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    typer.echo(
        f"{fault} drill of {report['stack']}: {report['old_leader']} -> "
        f"{report['new_leader']} (timeline {report['timeline']}); write gap "
        f"{report['write_gap_s']} s, {report['acked_writes_lost']} acknowledged writes lost "
        f"({report['writes_acked']} acknowledged, {report['writes_failed']} failed); healthy "
        f"again after {report['healthy_again_s']} s"
    )


@_command(recover_app, "switchover")
def recover_switchover_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    to: str = typer.Option(
        None, "--to", help="The replica to promote (default: the sync standby)."
    ),
) -> None:
    """Move the primary to another member, then verify (healthy, HAProxy, archive)."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.recover import recover_switchover

    result = _run(recover_switchover, stack, credentials, to)
    typer.echo(
        f"switchover of {stack.name}: {result['old_leader']} -> {result['leader']}; replicas "
        f"{', '.join(result['replicas'])}; archived {result['archived']}"
    )


@_command(recover_app, "reinit")
def recover_reinit_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    member: str = typer.Option(..., "--member", help="The replica to rebuild from the leader."),
) -> None:
    """Rebuild a replica's data directory from the leader, then verify."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.recover import recover_reinit

    result = _run(recover_reinit, stack, credentials, member)
    typer.echo(
        f"reinit of {result['member']} in {stack.name}: streaming again; leader {result['leader']}"
    )


@_command(recover_app, "replace")
def recover_replace_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    member: str = typer.Option(..., "--member", help="The droplet to replace, by name."),
    allow_destructive: bool = typer.Option(
        False, "--allow-destructive", help="Replace it even though it is running."
    ),
) -> None:
    """Destroy a lost droplet (off, gone or broken) and build a new one in its place:
    joined as replica and etcd member, routed, behind the load balancer; verified."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.recover import recover_replace

    result = _run(recover_replace, stack, credentials, member, allow_destructive)
    typer.echo(
        f"replaced {result['member']} ({result['roles']}) in {stack.name}: droplet "
        f"{result['old_droplet'] or '(gone)'} -> {result['new_droplet']}; leader "
        f"{result['leader']}, replicas {', '.join(result['replicas'])}"
    )


@_command(recover_app, "restore-cluster")
def recover_restore_cluster_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    source: str = typer.Option(..., "--from", help="The stack whose backups to restore."),
    target_time: str = typer.Option(
        ..., "--target-time", help="Restore to this ISO 8601 moment, e.g. 2026-11-30T14:02:00Z."
    ),
    source_bucket: str = typer.Option(
        None, "--from-bucket", help="The source's Spaces bucket (default: lifeboat-<from>)."
    ),
) -> None:
    """A new stack (--spec: its own name) whose cluster is another stack's as it was at a
    moment: its backup and WAL replayed by Patroni's bootstrap, replicas cloned, archiving
    under the new stack's prefix, the source's uploads copied, the site, a first backup.
    The source's archive is only read."""
    stack = _load_spec(spec)
    moment = _moment(target_time)
    if source == stack.name:
        raise BadInput(
            f"--from {source} is the stack in --spec: restore into a new stack with a name "
            "of its own (its droplets and Spaces prefix are new; the source is only read)"
        )
    _blocks(credentials)
    from flows.recover import recover_restore_cluster

    result = _run(recover_restore_cluster, stack, credentials, source, moment, source_bucket)
    typer.echo(
        f"stack {stack.name} restored from {source}'s backup {result['source backup']} to "
        f"{result['target time']}: timeline {result['timeline']}, recovery stopped "
        f"{result['stop']}; {result['media copied']} uploads copied; first backup "
        f"{result['first backup']}; {result['timings']['total']} s"
    )


@_command(app, "destroy")
def destroy_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    confirm: str = typer.Option(
        "", "--confirm", help="The stack's name: destroying it cannot be undone."
    ),
) -> None:
    """Remove the stack from the cloud (droplets, load balancer, firewalls, VPC) and its
    deployments from the server; its backups, WAL and media in Spaces are kept."""
    stack = _load_spec(spec)
    if confirm != stack.name:
        raise BadInput(
            f"destroy removes every droplet, the load balancer, the firewalls and the VPC of "
            f"stack {stack.name} (its objects in Spaces are kept): confirm with the stack's "
            f"name, --confirm {stack.name}"
        )
    _blocks(credentials)
    from flows.destroy import destroy

    result = _run(destroy, stack, credentials, confirm)
    typer.echo(f"destroyed stack {stack.name}: {', '.join(result['removed']) or 'nothing left'}")
    typer.echo(f"kept in Spaces: {result['kept in Spaces']}")
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:  # a server that stays up: its deployments go too
        from flows import service

        removed = service.undeploy(stack)
        typer.echo(f"from the server: {', '.join(removed) or 'nothing was deployed'}")


@_command(recover_app, "undelete")
def recover_undelete_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    since: str = typer.Option(
        ..., "--since", help="Bring back what was deleted at or after this ISO 8601 moment."
    ),
) -> None:
    """Backups, WAL and media of the stack deleted since a moment, brought back from the
    bucket's versions (kept backup.keep_deleted_days)."""
    stack = _load_spec(spec)
    moment = _moment(since, "--since")
    _blocks(credentials)
    from flows.recover import recover_undelete

    result = _run(recover_undelete, stack, credentials, moment)
    typer.echo(
        f"brought back {result['restored']} objects of {stack.name}; the catalog now holds "
        f"{result['backups']} backups"
        + (
            f"; problems: {'; '.join(result['catalog problems'])}"
            if result["catalog problems"]
            else ""
        )
    )


@_command(recover_app, "after-failover")
def recover_after_failover_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    rejoin_timeout: float = typer.Option(
        600, "--rejoin-timeout", help="Seconds to wait for the old primary to come back."
    ),
) -> None:
    """What follows a failover (the automation runs it on each promotion): members back
    and streaming, routing and the site checked, a base backup on the new timeline."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.after_failover import after_failover

    result = _run(after_failover, stack, credentials, None, rejoin_timeout)
    for step in ("leader", "replicas", "routing", "site", "backup"):
        typer.echo(f"{step}: {result[step]}")


def _moment(text: str, option: str = "--target-time") -> datetime.datetime:
    """An ISO 8601 moment with its time zone (a bare local time would be ambiguous)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"{option} {text!r} is not an ISO 8601 time: e.g. 2026-11-30T14:02:00Z"
        ) from None
    if moment.tzinfo is None:
        raise BadInput(f"{option} {text!r} has no time zone: add one, e.g. {text}Z for UTC")
    return moment


def _status_text(status: dict) -> str:
    """The status report for people: one line per droplet, member and backend."""
    out = [f"stack {status['stack']}: {'healthy' if status['ok'] else 'NOT HEALTHY'}"]
    out += [f"  problem: {p}" for p in status.get("problems", [])]
    out.append("droplets:")
    for d in status["droplets"]:
        state = d.get("error") or ", ".join(
            f"{u} since {t or '-'}" for u, t in d.get("services", {}).items()
        )
        out.append(
            f"  {d['name']:<24} {d['public_ip']:<15} {d['private_ip']:<15} "
            f"{','.join(d['roles']):<22} {state}"
        )
    out += [f"  {name:<24} MISSING" for name in status["missing_droplets"]]
    etcd = status["etcd"]
    out.append(
        f"etcd: {'ok' if etcd.get('ok') else 'NOT OK'} {'; '.join(etcd.get('problems', []))}"
    )
    patroni = status["patroni"]
    out.append(
        f"patroni: {'ok' if patroni.get('ok') else 'NOT OK'} "
        f"{'; '.join(patroni.get('problems', []))}"
    )
    for m in patroni.get("members", []):
        lag = "-" if m.get("lag") is None else f"{m['lag']} B"
        out.append(
            f"  {m['name']:<24} {m['role']:<13} {m['state']:<10} "
            f"timeline {m.get('timeline')}  lag {lag}"
        )
    for d in status["droplets"]:
        arch = d.get("archiver")
        if arch and "error" in arch:
            out.append(f"archiver {d['name']}: {arch['error']}")
        elif arch and not arch["in_recovery"]:
            age = arch["last_archived_age_s"]
            out.append(
                f"archiver {d['name']}: last {arch['last_archived_wal'] or '-'} "
                f"{'-' if age is None else f'{age} s ago'}, failed {arch['failed_count']}, "
                f"waiting {arch['ready']}"
            )
    b = status.get("backups", {})
    if "error" in b:
        out.append(f"backups: {b['error']}")
    elif b.get("newest"):
        out.append(
            f"backups: {b['count']}, newest {b['newest']} ({b['newest_age_s'] / 3600:.1f} h ago, "
            f"{b['newest_stored_bytes'] / 1e6:.0f} MB stored) {'; '.join(b['problems'])}"
        )
    else:
        out.append(f"backups: none {'; '.join(b.get('problems', []))}")
    for host, backends in status["haproxy"].items():
        if "error" in backends:
            out.append(f"haproxy {host}: {backends['error']}")
            continue
        for listener, servers in backends.items():
            up = [n for n, st in servers.items() if st == "UP"]
            out.append(f"haproxy {host} {listener}: UP {', '.join(up) or 'none'}")
    return "\n".join(out)


def _need_root() -> None:
    """The local cloud lives in root's files, network namespaces and nftables."""
    if os.geteuid() != 0:
        raise BadInput("the local cloud needs root: run this as root (e.g. with sudo)")


def _need_lab(api: bool = True) -> None:
    """The local cloud is up (with `api`: its API answers), else BadInput saying so."""
    from lab import lifecycle
    from lab.config import LAB_FILE

    _need_root()
    if not LAB_FILE.exists() or not lifecycle.TOKEN_FILE.exists():
        raise BadInput("the local cloud is down: run `lifeboat lab up`")
    # The API alone: partitions and power-offs must work while Spaces is out on purpose.
    if api and not lifecycle._api_answers(lifecycle.TOKEN_FILE.read_text()):
        raise BadInput(
            f"the local cloud's API at {lifecycle.API_URL} does not answer: run "
            "`lifeboat lab up` (it repairs a half-up local cloud)"
        )


def _find(action: Callable[[], dict], droplet: str) -> dict:
    """A fault on a droplet named (or numbered) on the command line; a name or id the
    local cloud does not know, or a partition from itself, is bad input."""
    from azure.core.exceptions import ResourceNotFoundError

    _need_lab()
    try:
        return action()
    except LookupError as exc:
        unknown = re.match(r"0 droplets are named (.*); ", str(exc))
        if unknown:
            raise BadInput(
                f"no droplet is named {unknown[1]}: `lifeboat lab status` lists them"
            ) from None
        raise BadInput(str(exc)) from None
    except ResourceNotFoundError:
        raise BadInput(
            f"no droplet has the id given ({droplet} or a --from): `lifeboat lab status` lists them"
        ) from None
    except ValueError as exc:  # partitioned from itself
        raise BadInput(str(exc)) from None


@_command(lab_app, "up")
def lab_up() -> None:
    """Bring the local cloud up (builds the golden image the first time)."""
    _need_root()
    from lab import lifecycle

    lifecycle.up()
    info = lifecycle.info()
    _print_status(info)
    try:
        _save_lab_blocks(info, LAB_BLOCKS)
    except Exception as exc:  # noqa: BLE001 - the lab is up; the blocks can be saved later
        typer.echo(
            f"warning: blocks not saved ({type(exc).__name__}); run `lifeboat lab blocks`",
            err=True,
        )


LAB_BLOCKS = "lab"


def _save_lab_blocks(info: dict, name: str) -> None:
    from lab.credentials import save_blocks

    save_blocks(info, name)
    typer.echo(f"blocks   {name} (run with --credentials {name})")


@_command(lab_app, "blocks")
def lab_blocks(
    name: str = typer.Option(LAB_BLOCKS, "--name", help="Name to save the blocks under."),
) -> None:
    """Save (or refresh) the running local cloud's API token, Spaces keys and SSH key as
    Lifeboat's credentials blocks under NAME (`lab up` does this for `lab`)."""
    _need_lab()
    from lab import lifecycle

    info = lifecycle.info()
    if not info.get("up"):
        raise BadInput("the local cloud is not all up: run `lifeboat lab up`")
    _save_lab_blocks(info, name)


@_command(lab_app, "down")
def lab_down() -> None:
    """Remove everything the local cloud made; fails if anything is left."""
    _need_root()
    from lab import lifecycle

    if lifecycle.down():
        raise typer.Exit(1)


@_command(lab_app, "status")
def lab_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """API URL and token, Spaces endpoint and keys, SSH key, droplets (exit code 1: down)."""
    _need_root()
    from lab import lifecycle

    try:
        info = lifecycle.info()
    except Exception as exc:  # noqa: BLE001 - half up: lab.json there, its API not answering
        info = {"up": False, "error": f"its API does not answer ({type(exc).__name__})"}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print_status(info)
    if not info.get("up"):
        raise typer.Exit(1)


def _print_status(info: dict) -> None:
    if not info.get("up"):
        extra = f" ({info['error']}): run `lifeboat lab up`" if info.get("error") else ""
        typer.echo(f"lab: down{extra}")
        return
    s3 = info["spaces"]
    typer.echo(f"API      {info['api_url']} (token in {info['api_token_file']})")
    typer.echo(f"Spaces   {s3['endpoint']} region {s3['region']} (CA {s3['ca_cert']})")
    typer.echo(f"SSH key  {info['ssh_private_key']}")
    for name, rel in info.get("releases", {}).items():
        typer.echo(f"release  {name} {rel['version']} {rel['url']} sha256 {rel['sha256']}")
    if notify := info.get("notifications"):
        state = "" if notify["up"] else "not running: `lifeboat lab up` starts it; "
        typer.echo(f"notify   {notify['url']} ({state}{notify['received']} received)")
    typer.echo(f"droplets {len(info['droplets'])}")
    for d in info["droplets"]:
        tags = ",".join(d["tags"])
        addrs = f"{d['public_ipv4'] or '-':<15} {d['private_ipv4'] or '-':<15}"
        typer.echo(f"  {d['id']:>6} {d['name']:<20} {d['status']:<7} {addrs} {tags}")


@_command(lab_app, "notifications")
def lab_notifications(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """What the local cloud's notification receiver got (Prefect's notification block
    `lab` posts there), oldest first: time (UTC), subject, first line of the body."""
    _need_lab(api=False)
    from lab import notifications

    if not notifications.is_up():
        typer.echo(
            "warning: the notification receiver is not running: `lifeboat lab up` starts it",
            err=True,
        )
    received = notifications.received()
    if as_json:
        typer.echo(json.dumps(received, indent=2))
        return
    if not received:
        typer.echo("no notifications received")
    for n in received:
        typer.echo(_notification_line(n))


def _notification_line(n: dict) -> str:
    """Time (UTC), subject, first line of the body; the whole body for one that is not
    the lab block's {"subject", "body"}."""
    at = datetime.datetime.fromtimestamp(n["received_at"], datetime.UTC)
    body = n["body"]
    subject, text = None, body
    if isinstance(body, dict) and "body" in body:
        subject, text = body.get("subject"), body["body"]
    text = text if isinstance(text, str) else json.dumps(text)
    first = (text.strip().splitlines() or [""])[0]
    return f"{at:%Y-%m-%dT%H:%M:%SZ} {subject or '-'}: {first}"


PEERS = typer.Option(
    None,
    "--from",
    help="Cut it off from these droplets only (name or id; repeat): a partial partition.",
)


@_command(lab_app, "partition")
def lab_partition(
    droplet: str,
    peers: list[str] = PEERS,
) -> None:
    """Drop all traffic of a droplet (by name or id) until `lab heal`; with --from, only its
    traffic to and from those droplets."""
    from lab import faults

    d = _find(lambda: faults.partition(droplet, peers or None), droplet)
    where = f" from {', '.join(peers)}" if peers else ""
    typer.echo(f"partitioned {d['name']} ({d['id']}){where}")


@_command(lab_app, "heal")
def lab_heal(droplet: str) -> None:
    """End a partition."""
    from lab import faults

    d = _find(lambda: faults.heal(droplet), droplet)
    typer.echo(f"healed {d['name']} ({d['id']})")


@_command(lab_app, "power-off")
def lab_power_off(droplet: str) -> None:
    """Hard power-off of a droplet through the API."""
    from lab import faults

    d = _find(lambda: faults.power_off(droplet), droplet)
    typer.echo(f"powering off {d['name']} ({d['id']})")


@_command(lab_app, "power-on")
def lab_power_on(droplet: str) -> None:
    """Power a droplet on again through the API."""
    from lab import faults

    d = _find(lambda: faults.power_on(droplet), droplet)
    typer.echo(f"powering on {d['name']} ({d['id']})")


@_command(lab_app, "s3-outage")
def lab_s3_outage() -> None:
    """Make Spaces unreachable (its data is kept)."""
    _need_lab(api=False)
    from lab import faults

    faults.s3_outage()
    typer.echo("Spaces is down")


@_command(lab_app, "s3-restore")
def lab_s3_restore() -> None:
    """Bring Spaces back."""
    _need_lab(api=False)
    from lab import faults

    try:
        faults.s3_restore()
    except RuntimeError as exc:  # moto itself is gone: there is nothing to bring back
        raise BadInput(
            f"Spaces cannot come back ({exc}): run `lifeboat lab up` (Spaces starts empty)"
        ) from None
    typer.echo("Spaces is up")
