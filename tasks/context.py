"""The stack context: what one run of a runbook works with, opened once from the stack spec
and the name of the credentials blocks, and handed down to subflows and tasks.

- the DigitalOcean client (token checked once, at open) and the account it answers for;
- the Spaces (S3) client;
- the stack's droplets by role (from the API, by tag);
- `Remote`, SSH to those droplets with pinned host keys, one connection per droplet;
- the stack's generated secrets (read, or generated and stored, on first use).

Every Prefect block Lifeboat reads is read here, and nowhere else. The host keys first
seen in the run are saved back to the SSH identity block once, when the context closes.
Nothing here treats a credentials name specially: the name only says which blocks to read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import paramiko
import pydo
from fabric import Connection
from pydantic import SecretStr

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity
from blocks.secrets import (
    WORDPRESS_ADMIN,
    WORDPRESS_DB,
    WORDPRESS_SALTS,
    cluster_secrets,
    new_password,
    stack_secret,
)
from blocks.stack import StackSpec, StackSpecBlock
from tasks import digitalocean, droplets
from tasks.droplets import unreachable
from tasks.hosts import SSH, Host
from tasks.spaces import s3_client


class ClusterError(RuntimeError):
    pass


class Remote:
    """SSH to the stack's droplets from Prefect tasks, one connection per droplet for the
    whole run, shared by the tasks (channels are independent; a per-host lock keeps two
    threads from driving one Connection at once). Fewer logins also sidesteps a lab
    defect: a login that arrives while a droplet's idle user@0.service is being stopped
    waits ~100 s (systemd cannot kill the container's cgroup and waits for the timeout)."""

    __slots__ = ("_ssh", "_initial", "_conns", "_locks", "_guard", "forgotten")  # no JSON

    def __init__(self, private_key: str, pins: dict[str, str]) -> None:
        self._ssh = SSH(private_key, dict(pins))
        self._initial = dict(pins)
        self._conns: dict[str, Connection] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        self.forgotten: set[str] = set()  # pins of droplets destroyed in this run

    def __repr__(self) -> str:  # Prefect may show task arguments: never the key
        return f"Remote({len(self._ssh.pins)} pinned host keys)"

    @contextmanager
    def connect(self, host: Host) -> Iterator[Connection]:
        with self._guard:
            lock = self._locks.setdefault(host.name, threading.RLock())
        with lock:
            conn = self._conns.get(host.name)
            transport = conn.client.get_transport() if conn is not None else None
            if transport is None or not transport.is_active():
                conn = self._conns[host.name] = self._ssh.connect(host)
            yield conn

    def close(self) -> None:
        with self._guard:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()

    def drop(self, host: Host) -> None:
        """Close the droplet's connection (after a power-off: a dead peer's transport still
        looks active, and a command on it would hang until its timeout)."""
        with self._guard:
            conn = self._conns.pop(host.name, None)
        if conn is not None:
            # The peer may be gone already (destroyed, powered off): closing its channels
            # then fails (EOFError, socket errors), and there is nothing left to close.
            with suppress(EOFError, OSError, paramiko.SSHException):
                conn.close()

    def forget(self, host: Host) -> None:
        """Close the droplet's connection and drop its host key: for a droplet destroyed in
        this run (a drill's scratch droplet, a replaced one), whose pin would only pile up
        in the block (`save_pins` removes it there too)."""
        self.drop(host)
        self._ssh.pins.pop(host.pin_key, None)
        self.forgotten.add(host.pin_key)

    @property
    def new_pins(self) -> dict[str, str]:
        return {k: v for k, v in self._ssh.pins.items() if self._initial.get(k) != v}


class Secrets:
    """The stack's generated passwords; repr and str show no values."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = {k: SecretStr(v) for k, v in values.items()}

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self._values))})"

    def reveal(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self._values.items()}

    def __getitem__(self, key: str) -> str:
        return self._values[key].get_secret_value()


def _missing_block(kind: str, name: str) -> ClusterError:
    return ClusterError(
        f"no {kind} block named {name!r}: save the credentials blocks under {name!r} (the "
        f"local cloud: `lifeboat lab up` saves 'lab', `lifeboat lab blocks --name {name}` any "
        'name; DigitalOcean: README, "Credentials"), or pass --credentials with the name '
        "of blocks you saved; nothing was created"
    )


def _prefect_api() -> str:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or "the temporary local Prefect server"


def _load(block: type, name: str) -> Any:  # noqa: ANN401 - a Block subclass
    kind = block.get_block_type_name()
    try:
        return block.load(name)
    except ValueError as exc:
        if "Unable to find block document" in str(exc):  # Block.load's "no such block"
            raise _missing_block(kind, name) from None
        # Not the error's text: a block that fails validation may quote what it holds.
        raise ClusterError(
            f"the {kind} block {name!r} cannot be read ({type(exc).__name__}): save it again"
        ) from None
    except httpx.HTTPStatusError as exc:
        raise ClusterError(
            f"the Prefect API at {_prefect_api()} answered {exc.response.status_code} "
            f"{exc.response.reason_phrase} reading block {name!r}: check PREFECT_API_URL and "
            "PREFECT_API_KEY (or PREFECT_API_AUTH_STRING)"
        ) from None
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise ClusterError(
            "the temporary local Prefect server did not start in time: run one (`prefect "
            "server start`) and set PREFECT_API_URL, or raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
        ) from None
    except httpx.TransportError as exc:
        raise ClusterError(
            f"cannot reach the Prefect API at {_prefect_api()} ({unreachable(exc)}): start "
            "it (`prefect server start`) or set PREFECT_API_URL to one that runs"
        ) from None


def check_blocks(credentials: str) -> None:
    """A ClusterError naming the first of the credentials blocks that is missing."""
    for block in (DigitalOceanCredentials, SpacesCredentials, SSHIdentity):
        _load(block, credentials)


def check_credentials(credentials: str) -> None:
    """Before a run: the three blocks exist and the DigitalOcean API answers and accepts the
    token (a ClusterError or CloudError saying what to change). One quick try: a run that
    starts retries as usual."""
    creds = _load(DigitalOceanCredentials, credentials)
    for block in (SpacesCredentials, SSHIdentity):
        _load(block, credentials)
    do = digitalocean.client(
        creds.token.get_secret_value(),
        creds.api_url,
        retry_total=1,
        connection_timeout=10,
        read_timeout=30,
    )
    droplets.check_access(do, credentials, creds.api_url)


class NoSuchStack(ValueError):
    """A run names a stack whose spec block is not stored."""


def stored_spec(stack: str) -> StackSpec:
    """The spec stored as block `stack` (`lifeboat deploy` stores it; deployed runs start
    from it), or an error naming what is stored and how to store it."""
    from prefect.client.orchestration import get_client

    try:
        return StackSpecBlock.load(stack).spec
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
    with get_client(sync_client=True) as client:
        stored = sorted(
            d.name for d in client.read_block_documents_by_type("lifeboat-stack-spec") if d.name
        )
    raise NoSuchStack(
        f"no stack spec block named {stack!r} (stored: {', '.join(stored) or 'none'}): "
        "save it with `lifeboat deploy --spec FILE` (or pick one of those)"
    ) from None


class StackContext:
    """One run's view of a stack; open with `StackContext.open` (or `opened`), close once.
    Its repr names the stack and the credentials, never a secret. Slots, no __dict__: when
    Prefect records a subflow's parameters it cannot encode one (it stores a placeholder),
    so no client, key or password of the context reaches the Prefect backend."""

    __slots__ = (
        "spec",
        "credentials",
        "do",
        "account",
        "_spaces",
        "public_key",
        "remote",
        "hosts",
        "_s3",
        "_cluster_secrets",
        "_wordpress_secrets",
    )

    def __init__(
        self,
        spec: StackSpec,
        credentials: str,
        do: pydo.Client,
        account: dict,
        spaces: SpacesCredentials,
        identity: SSHIdentity,
    ) -> None:
        self.spec = spec
        self.credentials = credentials
        self.do = do
        self.account = account
        self._spaces = spaces
        self.public_key = identity.public_key
        self.remote = Remote(identity.private_key.get_secret_value(), identity.known_hosts)
        self.hosts: list[Host] = droplets.inventory(do, spec)
        self._s3 = None
        self._cluster_secrets: Secrets | None = None
        self._wordpress_secrets: Secrets | None = None

    @classmethod
    def open(cls, spec: StackSpec, credentials: str) -> StackContext:
        """Read the three credentials blocks named `credentials`; a missing one fails here,
        naming it, before anything is created. The API token is checked once."""
        do_creds = _load(DigitalOceanCredentials, credentials)
        spaces = _load(SpacesCredentials, credentials)
        identity = _load(SSHIdentity, credentials)
        do = droplets.api(do_creds)
        account = droplets.check_access(do, credentials, do_creds.api_url)
        return cls(spec, credentials, do, account, spaces, identity)

    def __repr__(self) -> str:
        return f"StackContext({self.spec.name!r}, credentials={self.credentials!r})"

    # --- droplets ----------------------------------------------------------------------

    def refresh_hosts(self) -> list[Host]:
        """Read the stack's active droplets again (after provisioning)."""
        self.hosts = droplets.inventory(self.do, self.spec)
        return self.hosts

    def require_complete(self) -> list[Host]:
        """The hosts, when every droplet the spec plans is active; else a ClusterError."""
        missing = sorted({n.name for n in self.spec.nodes()} - {h.name for h in self.hosts})
        if missing:
            status = {d["name"]: d["status"] for d in droplets.stack_droplets(self.do, self.spec)}
            found = "; ".join(f"{n} is {status.get(n, 'gone')}" for n in missing)
            raise ClusterError(
                f"droplets of stack {self.spec.name} not active: {found}. Power an off one on "
                "and rerun, or put a new droplet in its place (`lifeboat recover replace "
                "--member NAME`); a stack not built yet: `lifeboat up`"
            )
        return self.hosts

    def require_role(self, role: str) -> list[Host]:
        """The active droplets with `role`; a ClusterError naming the planned ones when none
        is (a backup needs one healthy database droplet, not every droplet)."""
        found = self.with_role(role)
        if not found:
            planned = ", ".join(n.name for n in self.spec.nodes_with(role))
            raise ClusterError(
                f"no {role} droplet of stack {self.spec.name} is active (planned: {planned}): "
                "power one on, or run `lifeboat up`"
            )
        return found

    @property
    def hosts_by_name(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    def with_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if role in h.roles]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # --- Spaces --------------------------------------------------------------------------

    @property
    def s3(self):  # noqa: ANN201 - boto3's client class is generated
        """The Spaces client of this run (boto3 clients are thread-safe)."""
        if self._s3 is None:
            self._s3 = s3_client(self._spaces)
        return self._s3

    def s3_with(self, **config: Any):  # noqa: ANN201, ANN401
        """A Spaces client with other botocore settings (e.g. a single attempt)."""
        return s3_client(self._spaces, **config)

    def spaces_settings(self) -> Secrets:
        """What a droplet's WAL agent needs to reach Spaces (printed as names only)."""
        return Secrets(
            {
                "endpoint": self._spaces.endpoint,
                "region": self._spaces.region,
                "access_key": self._spaces.access_key.get_secret_value(),
                "secret_key": self._spaces.secret_key.get_secret_value(),
            }
        )

    # --- secrets -------------------------------------------------------------------------

    @property
    def cluster_secrets(self) -> Secrets:
        """The cluster's passwords (generated and stored on first use, then kept)."""
        if self._cluster_secrets is None:
            self._cluster_secrets = Secrets(cluster_secrets(self.spec.name))
        return self._cluster_secrets

    @property
    def wordpress_secrets(self) -> Secrets:
        """The WordPress role's password, the site administrator's, and WordPress's
        salts (no superuser's: the web tier never holds it)."""
        if self._wordpress_secrets is None:
            stack = self.spec.name
            values = {
                WORDPRESS_DB: stack_secret(stack, WORDPRESS_DB),
                WORDPRESS_ADMIN: stack_secret(stack, WORDPRESS_ADMIN),
            }
            for key, name in WORDPRESS_SALTS.items():
                values[key] = stack_secret(stack, name, lambda: new_password(64))
            self._wordpress_secrets = Secrets(values)
        return self._wordpress_secrets

    # --- closing -------------------------------------------------------------------------

    def close(self) -> int:
        """Close SSH connections; store host keys first seen in this run in the SSH identity
        block (read again first, so pins another run saved meanwhile are kept). Returns
        how many were new."""
        return save_pins(self.credentials, self.remote)


@contextmanager
def opened(
    spec: StackSpec, credentials: str, stack: StackContext | None = None
) -> Iterator[StackContext]:
    """The context of this run: `stack` when a parent flow handed one down (it closes it),
    else one opened here from `spec` and `credentials` and closed (pins saved) on exit.

    Tasks run in it untagged: the CLI tags its flow runs (`stack:<name>`, which the stack's
    automations match, as a deployment tags its runs), and Prefect asks the server for a
    concurrency slot per tag for every tagged task run, one API call each; with 13 probes
    at once that cost `lifeboat status` about 2 s here, for limits nobody set."""
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        if stack is not None:
            yield stack
            return
        ctx = StackContext.open(spec, credentials)
        try:
            yield ctx
        finally:
            pinned = ctx.close()
            if pinned:
                _log_pins(pinned, credentials)


def _log_pins(pinned: int, credentials: str) -> None:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    with suppress(MissingContextError):  # outside a flow run: nothing to log to
        get_run_logger().info("pinned %d new SSH host key(s) in block %r", pinned, credentials)


# --- for scripts and tests -----------------------------------------------------------------


def load(spec: StackSpec, credentials: str, complete: bool = True) -> tuple[list[Host], Remote]:
    """The stack's active droplets and SSH to them, from a freshly opened context (for tests
    and benchmarks; runbooks use `opened`). With `complete`, every planned droplet must be
    there. Pins the caller wants kept: `save_pins(credentials, remote)`."""
    ctx = StackContext.open(spec, credentials)
    if complete:
        ctx.require_complete()
    return ctx.hosts, ctx.remote


def save_pins(credentials: str, remote: Remote) -> int:
    """Close `remote` and store the host keys it saw first (see StackContext.close)."""
    remote.close()
    new = remote.new_pins
    if not new and not remote.forgotten:
        return 0
    ident = _load(SSHIdentity, credentials)
    kept = {k: v for k, v in ident.known_hosts.items() if k not in remote.forgotten}
    if not new and kept == ident.known_hosts:
        return 0
    ident.known_hosts = {**kept, **new}
    ident.save(credentials, overwrite=True)
    return len(new)
