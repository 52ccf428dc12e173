"""SSH to droplets with Fabric: pinned host keys, files placed only when they change, and
commands with their own timeouts (Prefect's task timeout cannot interrupt them).

Host keys are pinned per droplet id and address at first contact (trust on first use, as
with cloud-init droplets) and checked on every later connection: a changed key stops the
run with an error that says which droplet and what to do.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

import paramiko
from fabric import Connection
from invoke.runners import Result

CONNECT_TIMEOUT = 15
COMMAND_TIMEOUT = 300


class HostKeyChanged(RuntimeError):
    pass


@dataclass(frozen=True)
class Host:
    """A droplet as the runbooks see it."""

    name: str
    droplet_id: int
    public_ip: str
    private_ip: str
    roles: tuple[str, ...] = ()
    group: str = ""

    @classmethod
    def from_droplet(cls, droplet: dict) -> Host:
        v4 = {n["type"]: n["ip_address"] for n in droplet["networks"]["v4"]}
        roles = tuple(
            sorted(t.split(":", 1)[1] for t in droplet.get("tags", []) if t.startswith("role:"))
        )
        group = next(
            (t.split(":", 1)[1] for t in droplet.get("tags", []) if t.startswith("group:")), ""
        )
        return cls(droplet["name"], droplet["id"], v4["public"], v4["private"], roles, group)

    @property
    def pin_key(self) -> str:
        return f"{self.droplet_id}/{self.public_ip}"


class _PinPolicy(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record the key a never-seen droplet presents."""

    def __init__(self, pins: dict[str, str], pin_key: str) -> None:
        self.pins, self.pin_key = pins, pin_key

    def missing_host_key(self, client, hostname, key) -> None:  # noqa: ANN001 - paramiko's API
        self.pins[self.pin_key] = f"{key.get_name()} {key.get_base64()}"


@dataclass
class SSH:
    """Connections to many hosts with one identity; `pins` is updated in place and should be
    stored (SSHIdentity block) after a run that met new droplets."""

    private_key: str
    pins: dict[str, str] = field(default_factory=dict)
    user: str = "root"

    def connect(self, host: Host) -> Connection:
        pkey = load_private_key(self.private_key)
        conn = Connection(
            host.public_ip,
            user=self.user,
            connect_timeout=CONNECT_TIMEOUT,
            connect_kwargs={"pkey": pkey, "look_for_keys": False, "allow_agent": False},
        )
        # Only our pins count: never the orchestrator user's ~/.ssh/known_hosts.
        conn.client = paramiko.SSHClient()
        keys = conn.client.get_host_keys()
        pinned = self.pins.get(host.pin_key)
        if pinned:
            kind, blob = pinned.split()
            keys.add(host.public_ip, kind, paramiko.PKey.from_type_string(kind, _b64(blob)))
        conn.client.set_missing_host_key_policy(_PinPolicy(self.pins, host.pin_key))
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(
                f"the SSH host key of droplet {host.name} (id {host.droplet_id}, "
                f"{host.public_ip}) is not the one pinned at first contact. Someone may be "
                "in the middle; if the droplet was rebuilt on purpose, remove its entry "
                f"{host.pin_key!r} from the SSH identity block's known_hosts and rerun."
            ) from exc
        return conn


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def load_private_key(text: str) -> paramiko.PKey:
    """An OpenSSH private key of any type (paramiko 5's PKey base class cannot load one)."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise ValueError("the SSH identity's private key is not an ed25519, ECDSA or RSA key")


def run(
    conn: Connection, command: str, timeout: int = COMMAND_TIMEOUT, warn: bool = False
) -> Result:
    """Run a command; its output is not echoed (it may name secrets' file paths, never the
    secrets themselves: secrets travel in files placed by `put`, not on command lines)."""
    return conn.run(command, hide=True, warn=warn, timeout=timeout, in_stream=False)


def put(
    conn: Connection,
    path: str,
    content: str | bytes,
    mode: str = "0644",
    owner: str = "root:root",
) -> bool:
    """Place a file unless it is already there with the same content, mode and owner;
    returns whether anything changed. Written to a temporary name, then renamed. The
    temporary file is created empty (umask 077) and given its final owner and mode before
    any content is written into it: a secret is never readable beyond its final mode,
    not even for a moment, and nothing is written when chown or chmod fails."""
    data = content.encode() if isinstance(content, str) else content
    digest = hashlib.sha256(data).hexdigest()
    q = shlex.quote(path)
    probe = run(conn, f"stat -c '%a %U:%G' {q} 2>/dev/null && sha256sum {q}", warn=True)
    if probe.ok:
        perms, sha = probe.stdout.splitlines()[0], probe.stdout.splitlines()[1].split()[0]
        if sha == digest and perms == f"{int(mode, 8):o} {owner}":
            return False
    tmp = shlex.quote(f"{path}.lifeboat-new")
    run(
        conn,
        f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')} && (umask 077 && : > {tmp})"
        f" && chown {owner} {tmp} && chmod {mode} {tmp}",
    )
    conn.put(io.BytesIO(data), f"{path}.lifeboat-new")  # an existing file keeps its mode
    run(conn, f"mv {tmp} {q}")
    return True


@contextlib.contextmanager
def secret_file(
    conn: Connection, path: str, content: str, owner: str = "root:root"
) -> Iterator[str]:
    """A file only `owner` reads (0600) that a command reads a secret from (never its
    command line), removed when the block ends, whatever happens."""
    put(conn, path, content, "0600", owner)
    try:
        yield path
    finally:
        run(conn, f"rm -f {shlex.quote(path)}", warn=True)
