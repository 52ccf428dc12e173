"""The `lifeboat` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

# No network but the registries here; Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Lifeboat: disaster-recovery runbooks for WordPress on Patroni.", no_args_is_help=True
)
lab_app = typer.Typer(
    help="The local cloud: DigitalOcean on one machine (needs root).", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")

SPEC = typer.Option(..., "--spec", help="Stack spec (YAML), e.g. examples/article.yaml.")
CREDENTIALS = typer.Option(
    "lab",
    "--credentials",
    help="Name of the credentials blocks to use (`lifeboat lab blocks` saves the local "
    "cloud's as `lab`).",
)


def _load_spec(path: Path):  # noqa: ANN202 - StackSpec, imported lazily
    from blocks.stack import SpecError, StackSpec

    try:
        return StackSpec.from_yaml(path)
    except (SpecError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _blocks(credentials: str) -> None:
    """The credentials blocks named `credentials` must exist: say which is missing, and how
    to save it, before any run starts."""
    from tasks.context import ClusterError, check_blocks

    try:
        check_blocks(credentials)
    except ClusterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("up")
def up_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Provision the stack's droplets and build its cluster (a rerun changes nothing)."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.up import up

    result = up(stack, credentials)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command("wordpress")
def wordpress_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Roll the web tier out alone, one droplet at a time behind health gates."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.wordpress import wordpress

    result = wordpress(stack, credentials)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command("backup")
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

    typer.echo(json.dumps(backup(stack, credentials, wait), indent=2, default=str))


@app.command("backup-health")
def backup_health_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Fails when WAL archiving lags or the newest backup is older than the schedule allows."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.backup import backup_health

    typer.echo(json.dumps(backup_health(stack, credentials), indent=2, default=str))


@app.command("serve")
def serve_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Serve the stack's scheduled runbooks (nightly backup, health checks) until stopped."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from prefect import serve

    from flows.serve import deployments

    serve(*deployments(stack, credentials))


@app.command("provision")
def provision_cmd(spec: Path = SPEC, credentials: str = CREDENTIALS) -> None:
    """Only the cloud resources: droplets, VPC, firewalls, load balancer, bucket."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.provision import provision

    for host in provision(stack, credentials):
        typer.echo(
            f"{host.name:<28} {host.public_ip:<15} {host.private_ip:<15} {','.join(host.roles)}"
        )


@app.command("status")
def status_cmd(
    spec: Path = SPEC,
    credentials: str = CREDENTIALS,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """Droplets and roles, etcd health, Patroni members, HAProxy backends."""
    stack = _load_spec(spec)
    _blocks(credentials)
    from flows.status import stack_status

    status = stack_status(stack, credentials)
    typer.echo(json.dumps(status, indent=2, default=str) if as_json else _status_text(status))


def _status_text(status: dict) -> str:
    """The status report for people: one line per droplet, member and backend."""
    out = [f"stack {status['stack']}: {'healthy' if status['ok'] else 'NOT HEALTHY'}"]
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


@lab_app.command("up")
def lab_up() -> None:
    """Bring the local cloud up (builds the golden image the first time)."""
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


@lab_app.command("blocks")
def lab_blocks(
    name: str = typer.Option(LAB_BLOCKS, "--name", help="Name to save the blocks under."),
) -> None:
    """Save (or refresh) the running local cloud's API token, Spaces keys and SSH key as
    Lifeboat's credentials blocks under NAME (`lab up` does this for `lab`)."""
    from lab import lifecycle

    info = lifecycle.info()
    if not info.get("up"):
        typer.echo("error: the local cloud is down: run `lifeboat lab up` first", err=True)
        raise typer.Exit(2)
    _save_lab_blocks(info, name)


@lab_app.command("down")
def lab_down() -> None:
    """Remove everything the local cloud made; fails if anything is left."""
    from lab import lifecycle

    if lifecycle.down():
        raise typer.Exit(1)


@lab_app.command("status")
def lab_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """API URL and token, Spaces endpoint and keys, SSH key, droplets."""
    from lab import lifecycle

    info = lifecycle.info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print_status(info)
    if not info.get("up"):
        raise typer.Exit(1)


def _print_status(info: dict) -> None:
    if not info.get("up"):
        typer.echo("lab: down")
        return
    s3 = info["spaces"]
    typer.echo(f"API      {info['api_url']} (token in {info['api_token_file']})")
    typer.echo(f"Spaces   {s3['endpoint']} region {s3['region']} (CA {s3['ca_cert']})")
    typer.echo(f"SSH key  {info['ssh_private_key']}")
    for name, rel in info.get("releases", {}).items():
        typer.echo(f"release  {name} {rel['version']} {rel['url']} sha256 {rel['sha256']}")
    typer.echo(f"droplets {len(info['droplets'])}")
    for d in info["droplets"]:
        tags = ",".join(d["tags"])
        addrs = f"{d['public_ipv4'] or '-':<15} {d['private_ipv4'] or '-':<15}"
        typer.echo(f"  {d['id']:>6} {d['name']:<20} {d['status']:<7} {addrs} {tags}")


PEERS = typer.Option(
    None,
    "--from",
    help="Cut it off from these droplets only (name or id; repeat): a partial partition.",
)


@lab_app.command("partition")
def lab_partition(
    droplet: str,
    peers: list[str] = PEERS,
) -> None:
    """Drop all traffic of a droplet (by name or id) until `lab heal`; with --from, only its
    traffic to and from those droplets."""
    from lab import faults

    d = faults.partition(droplet, peers or None)
    where = f" from {', '.join(peers)}" if peers else ""
    typer.echo(f"partitioned {d['name']} ({d['id']}){where}")


@lab_app.command("heal")
def lab_heal(droplet: str) -> None:
    """End a partition."""
    from lab import faults

    d = faults.heal(droplet)
    typer.echo(f"healed {d['name']} ({d['id']})")


@lab_app.command("power-off")
def lab_power_off(droplet: str) -> None:
    """Hard power-off of a droplet through the API."""
    from lab import faults

    d = faults.power_off(droplet)
    typer.echo(f"powering off {d['name']} ({d['id']})")


@lab_app.command("power-on")
def lab_power_on(droplet: str) -> None:
    """Power a droplet on again through the API."""
    from lab import faults

    d = faults.power_on(droplet)
    typer.echo(f"powering on {d['name']} ({d['id']})")


@lab_app.command("s3-outage")
def lab_s3_outage() -> None:
    """Make Spaces unreachable (its data is kept)."""
    from lab import faults

    faults.s3_outage()
    typer.echo("Spaces is down")


@lab_app.command("s3-restore")
def lab_s3_restore() -> None:
    """Bring Spaces back."""
    from lab import faults

    faults.s3_restore()
    typer.echo("Spaces is up")
