"""The stack spec: what to build, as data. Loaded from YAML, storable as a Prefect block.

Every check here runs before any API call, and every message says what to change.
Region and size can only be checked against the live catalog: see `check_catalog`.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from cronsim import CronSim, CronSimError
from prefect.blocks.core import Block
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from blocks import sqlnames

Role = Literal["etcd", "postgres", "haproxy", "wordpress"]
ROLES: tuple[str, ...] = ("etcd", "postgres", "haproxy", "wordpress")
# The login-only role HAProxy droplets check routing as (tasks/haproxy.py): no spec role
# may take its name.
ROUTING_ROLE = "lifeboat_routing"

# DNS label: the stack and group names end up in hostnames and DigitalOcean tags.
_LABEL = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_HOSTNAME_MAX = 63
# HAProxy time format (`inter`, `fastinter`) and Patroni's lag format (`/replica?lag=`).
_HAPROXY_TIME = re.compile(r"^[0-9]+(us|ms|s|m|h|d)?$")
_PATRONI_LAG = re.compile(r"^[0-9]+(B|kB|MB|GB|TB)?$")
# Ports Lifeboat's own daemons use on the same droplets: HAProxy must not take them.
_RESERVED_PORTS = {
    22: "ssh",
    2379: "etcd client",
    2380: "etcd peer",
    5432: "postgresql",
    8008: "patroni",
}
# Parameters the cluster depends on (replication, rewind, auth) or that Patroni sets itself.
_GUC_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")
MANAGED_PARAMETERS = frozenset(
    {
        "wal_level",
        "hot_standby",
        "wal_log_hints",
        "password_encryption",
        "listen_addresses",
        "port",
        "synchronous_standby_names",
        "unix_socket_directories",
        "hba_file",
        "ident_file",
        "data_directory",
        "config_file",
        # Archiving and recovery: the WAL agent's commands, and what a restore sets.
        "archive_mode",
        "archive_command",
        "archive_library",
        "restore_command",
        "primary_conninfo",
        "primary_slot_name",
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_timeline",
        "recovery_target_action",
        "cluster_name",
    }
)
_PRIVATE_V4 = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


def _check_label(kind: str, value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError(
            f"{kind} {value!r} must be a DNS label: lowercase letters, digits and hyphens, "
            "starting with a letter and not ending with a hyphen (e.g. 'shop-prod')"
        )
    return value


def _network(key: str, value: str, example: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        hint = f"did you mean '{ipaddress.ip_network(value, strict=False)}'?"
    except ValueError:
        hint = f"write a network like '{example}'"
    raise ValueError(f"{key}: {value!r} is not a network address: {hint}")


class _Section(BaseModel):
    # A typo in a YAML key must fail loudly, not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeGroup(_Section):
    name: str
    count: int = Field(ge=1, le=20)
    size: str = "s-1vcpu-1gb"
    roles: tuple[Role, ...]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_label("group name", value)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not value:
            raise ValueError(f"a group needs at least one role: choose from {', '.join(ROLES)}")
        unknown = [r for r in value if r not in ROLES]
        if unknown:
            raise ValueError(
                f"unknown role {', '.join(map(repr, unknown))}: roles are {', '.join(ROLES)}"
            )
        # Keep the canonical order so tags and comparisons do not depend on YAML order.
        return tuple(r for r in ROLES if r in value)


class PostgresSpec(_Section):
    # The droplets' package manifest carries postgresql-15 only.
    version: Literal[15] = 15
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in value if not _GUC_NAME.fullmatch(k))
        if bad:
            raise ValueError(
                f"postgres.parameters: {', '.join(map(repr, bad))} not a PostgreSQL "
                "parameter name (lowercase letters, digits, '_', one '.' for an extension's)"
            )
        if "archive_timeout" in value:
            raise ValueError(
                "postgres.parameters: archive_timeout is set by backup.archive_timeout: "
                "move it there"
            )
        managed = sorted(k for k in value if k in MANAGED_PARAMETERS or k.startswith("ssl"))
        if managed:
            raise ValueError(
                f"postgres.parameters: {', '.join(managed)} managed by Lifeboat/Patroni "
                "(replication, archiving, restores, TLS and authentication depend on them): "
                "remove them"
            )
        return value


class PatroniSpec(_Section):
    # Measured on this stack: 20/5/7 halves failover time after a power-off against the
    # stock 30/10/10 (FIELD-NOTES). Patroni refuses ttl < 20, loop_wait < 1, retry < 3.
    ttl: int = 20
    loop_wait: int = Field(default=5, ge=1)
    retry_timeout: int = Field(default=7, ge=3)
    maximum_lag_on_failover: int = Field(default=1048576, ge=0)
    failsafe_mode: bool = False
    superuser: str = "postgres"
    replication_user: str = "replicator"
    rewind_user: str = "rewind"
    restapi_user: str = "patroni"

    @field_validator("superuser", "replication_user", "rewind_user")
    @classmethod
    def _role(cls, value: str) -> str:
        return sqlnames.check(value, role=True, example="replicator")

    @field_validator("restapi_user")
    @classmethod
    def _restapi_user(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,63}$", value):
            raise ValueError("use letters, digits, '-' and '_' only, e.g. 'patroni'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_sync_here(cls, data: Any) -> Any:
        if isinstance(data, dict) and (
            {"synchronous_mode", "synchronous_mode_strict"} & data.keys()
        ):
            raise ValueError(
                "patroni.synchronous_mode is set by the top-level `replication: synchronous` "
                "or `replication: async`: move it there"
            )
        return data

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: int) -> int:
        # An error, not a warning: Patroni silently raises a lower ttl to 20, so the spec
        # would not describe the cluster.
        if value < 20:
            raise ValueError(
                f"patroni.ttl {value} is below 20 s, which Patroni does not accept "
                "(it would silently use 20): set ttl to 20 or more"
            )
        return value

    @model_validator(mode="after")
    def _timers(self) -> PatroniSpec:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"patroni timers break loop_wait + 2*retry_timeout <= ttl "
                f"({self.loop_wait} + 2*{self.retry_timeout} = "
                f"{self.loop_wait + 2 * self.retry_timeout} > {self.ttl}): raise ttl to at least "
                f"{self.loop_wait + 2 * self.retry_timeout} or lower loop_wait/retry_timeout "
                "(measured default: ttl 20, loop_wait 5, retry_timeout 7)"
            )
        return self


class HAProxySpec(_Section):
    primary_port: int = Field(default=5000, ge=1024, le=65535)
    replica_port: int = Field(default=5001, ge=1024, le=65535)
    stats_port: int = Field(default=7000, ge=1024, le=65535)
    stats_user: str = "lifeboat"
    # Measured: `inter 3s fall 3` alone adds ~6 s to every failover (FIELD-NOTES).
    check_inter: str = "1s"
    fastinter: str = "500ms"
    fall: int = Field(default=2, ge=1)
    rise: int = Field(default=1, ge=1)
    replica_max_lag: str = "10MB"

    @field_validator("check_inter", "fastinter")
    @classmethod
    def _time(cls, value: str) -> str:
        if not _HAPROXY_TIME.match(value):
            raise ValueError(f"{value!r} is not an HAProxy time: write e.g. '1s' or '500ms'")
        return value

    @field_validator("replica_max_lag")
    @classmethod
    def _lag(cls, value: str) -> str:
        if not _PATRONI_LAG.match(value):
            raise ValueError(f"{value!r} is not a Patroni lag: write e.g. '10MB' or '1048576'")
        return value

    @field_validator("stats_user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]+$", value):
            raise ValueError("haproxy.stats_user: use letters, digits, '-' and '_' only")
        return value

    @model_validator(mode="after")
    def _ports(self) -> HAProxySpec:
        ports = {"primary_port": self.primary_port, "replica_port": self.replica_port}
        ports["stats_port"] = self.stats_port
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"haproxy ports must differ: {ports}")
        for key, port in ports.items():
            if port in _RESERVED_PORTS:
                raise ValueError(
                    f"haproxy.{key} {port} is {_RESERVED_PORTS[port]}'s port on the same "
                    "droplets: choose another"
                )
        return self


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Pinned(_Section):
    """One release Lifeboat downloads on a droplet: never unpacked unless its SHA-256 matches."""

    version: str = Field(pattern=r"^[0-9][0-9A-Za-z.-]*$")
    url: str
    # No default checksum: none could be verified on the machine this was written on (no
    # internet). Compute and compare it against the publisher's before setting it.
    sha256: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith("https://") or not value.endswith((".tar.gz", ".tgz")):
            raise ValueError(
                f"{value!r}: give an https:// URL of a .tar.gz release archive "
                "(only gzip tarballs are unpacked)"
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value.lower()):
            raise ValueError(
                f"{value!r} is not a SHA-256: write the 64 hex digits `sha256sum` prints"
            )
        return value.lower() if value else value


class WordPressVersions(_Section):
    # PG4WP 3.4.1 is tested up to WordPress 6.4.3 (FIELD-NOTES): upgrade them together.
    wordpress: Pinned = Pinned(version="6.4.3", url="https://wordpress.org/wordpress-6.4.3.tar.gz")
    pg4wp: Pinned = Pinned(
        version="3.4.1",
        url="https://github.com/PostgreSQL-For-Wordpress/postgresql-for-wordpress/archive/"
        "refs/tags/v3.4.1.tar.gz",
    )


class WordPressSpec(_Section):
    """The web tier: nginx + php-fpm + WordPress (+ PG4WP) on the wordpress droplets."""

    # The site's name (nginx server_name, WordPress's home); default `<stack>.lifeboat.test`.
    domain: str | None = None
    # Where WordPress core comes from:
    # - "release" (default): WordPress and PG4WP downloaded on each droplet from
    #   `versions` (https URL + SHA-256 pins), for droplets that reach the internet.
    # - "debian-package": Debian's `wordpress` package (the local cloud, no internet);
    #   without PG4WP, WordPress itself cannot install on PostgreSQL.
    source: Literal["release", "debian-package"] = "release"
    versions: WordPressVersions = Field(default_factory=WordPressVersions)
    db_name: str = "wordpress"
    db_user: str = "wordpress"
    table_prefix: str = Field(default="wp_", pattern=r"^[A-Za-z0-9_]{1,20}$")
    # The site WordPress installs once (release source): its title (default: the stack's
    # name), its administrator (the password is generated once, kept in a Secret block)
    # and the theme every release must carry and the site shows.
    title: str | None = Field(default=None, min_length=1, max_length=200)
    admin_user: str = Field(default="lifeboat", pattern=r"^[a-z0-9][a-z0-9_.-]{2,59}$")
    admin_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[a-z]{2,63}$")
    theme: str = Field(default="twentytwentythree", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.match(value):
            raise ValueError(
                f"wordpress.domain {value!r} must be a lowercase DNS name such as "
                "'blog.example.com' (no scheme, port or path)"
            )
        return value

    @field_validator("db_name", "db_user")
    @classmethod
    def _sql_name(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("pg_") or value in ("postgres", "template0", "template1"):
            raise ValueError(
                f"{value!r} is PostgreSQL's own (not 'postgres', 'template0/1' or 'pg_*'): "
                "choose another name, e.g. 'wordpress'"
            )
        return sqlnames.check(value, role=info.field_name == "db_user", example="wordpress")

    def site_domain(self, stack: str) -> str:
        return self.domain or f"{stack}.lifeboat.test"

    def site_title(self, stack: str) -> str:
        return self.title or stack

    def site_admin_email(self, stack: str) -> str:
        return self.admin_email or f"{self.admin_user}@{self.site_domain(stack)}"


class BackupSpec(_Section):
    """Base backups and WAL archiving to Spaces (flows/backup.py)."""

    # Spaces bucket names are global across DigitalOcean: default `lifeboat-<stack>`.
    bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    # Cron, in UTC: when `lifeboat serve` takes the base backup; the health check allows
    # one period plus an hour between backups.
    schedule: str = "0 3 * * *"
    # Keep the newest N backups, and enough to restore to any point of the last D days.
    retention_count: int = Field(default=7, ge=1)
    retention_days: int = Field(default=14, ge=1)
    # Bounds the age of the newest archived WAL, i.e. the RPO without streaming.
    archive_timeout: int = Field(default=60, ge=1)
    # The bucket keeps versions: a deleted or overwritten object can be brought back
    # (`lifeboat backup undelete`) for this many days, then its old version expires.
    keep_deleted_days: int = Field(default=7, ge=1, le=365)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            CronSim(value, datetime.datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(
                f"backup.schedule {value!r} is not a cron expression ({exc}): use five "
                'fields, minute hour day month weekday, e.g. "0 3 * * *" for 03:00 UTC daily'
            ) from None
        return value


class EventsSpec(_Section):
    """Events from the cluster to the Prefect server (tasks/events.py): Patroni's role
    changes, posted by each database droplet to `api_url`'s /events."""

    # The Prefect API as the droplets reach it (the lab gateway's address in the local
    # cloud); none: events stay spooled on the droplets until one is set.
    api_url: str | None = None

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?/api", value):
            raise ValueError(
                f"events.api_url {value!r} is not a Prefect API URL: give the server's "
                "address as the droplets reach it, ending in /api, e.g. "
                "http://198.18.0.1:4200/api"
            )
        return value


class PlannedNode(BaseModel):
    """A droplet the spec asks for; the provision flow matches it by name and tags."""

    model_config = ConfigDict(frozen=True)

    name: str
    group: str
    size: str
    roles: tuple[Role, ...]
    tags: tuple[str, ...]


class StackSpec(_Section):
    name: str
    region: str
    image: str = "debian-12-x64"
    vpc_cidr: str
    admin_cidrs: list[str] = Field(min_length=1)
    allow_world_admin: bool = False
    groups: list[NodeGroup] = Field(min_length=1)
    single_node: bool = False
    replication: Literal["synchronous", "async"] = "synchronous"
    postgres: PostgresSpec = Field(default_factory=PostgresSpec)
    patroni: PatroniSpec = Field(default_factory=PatroniSpec)
    haproxy: HAProxySpec = Field(default_factory=HAProxySpec)
    wordpress: WordPressSpec = Field(default_factory=WordPressSpec)
    backup: BackupSpec = Field(default_factory=BackupSpec)
    events: EventsSpec = Field(default_factory=EventsSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_label("stack name", value)

    @field_validator("vpc_cidr")
    @classmethod
    def _vpc(cls, value: str) -> str:
        net = _network("vpc_cidr", value, "10.10.0.0/16")
        if net.version != 4 or not any(net.subnet_of(p) for p in _PRIVATE_V4):
            raise ValueError(
                f"vpc_cidr {value} is not a private IPv4 range: use a range inside 10.0.0.0/8, "
                "172.16.0.0/12 or 192.168.0.0/16"
            )
        # DigitalOcean accepts VPC ranges from /16 to /28.
        if not 16 <= net.prefixlen <= 28:
            raise ValueError(f"vpc_cidr {value}: choose a prefix length between /16 and /28")
        return str(net)

    @field_validator("admin_cidrs")
    @classmethod
    def _admin(cls, value: list[str]) -> list[str]:
        return [str(_network("admin_cidrs", cidr, "203.0.113.0/24")) for cidr in value]

    @model_validator(mode="after")
    def _topology(self) -> StackSpec:
        problems: list[str] = []
        if not self.allow_world_admin:
            world = [c for c in self.admin_cidrs if ipaddress.ip_network(c).prefixlen == 0]
            if world:
                problems.append(
                    f"admin_cidrs {', '.join(world)} opens SSH to the whole internet: list "
                    "your own address ranges instead, or set allow_world_admin: true"
                )
        roles = {
            "patroni.superuser": self.patroni.superuser,
            "patroni.replication_user": self.patroni.replication_user,
            "patroni.rewind_user": self.patroni.rewind_user,
            "wordpress.db_user": self.wordpress.db_user,
        }
        seen: dict[str, str] = {ROUTING_ROLE: "Lifeboat's routing check role"}
        for key, role in roles.items():
            if role in seen:
                problems.append(
                    f"{key} {role!r} is also {seen[role]}: each PostgreSQL role needs its own "
                    "name (each has its own password and rights)"
                )
            seen.setdefault(role, key)
        names = [g.name for g in self.groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate group name(s) {', '.join(dupes)}: give each group its own")

        counts = {role: sum(g.count for g in self.groups if role in g.roles) for role in ROLES}
        etcd = counts["etcd"]
        if self.single_node:
            if etcd not in (1, 3, 5, 7):
                problems.append(
                    f"etcd has {etcd} member(s): a single-node stack needs exactly 1 (or 3, 5 or 7)"
                )
        elif etcd not in (3, 5, 7):
            problems.append(
                f"etcd has {etcd} member(s): it needs 3, 5 or 7 (an odd number, so a majority "
                "survives a loss): change the etcd groups' counts, or set single_node: true "
                "for a one-member test stack"
            )
        if counts["postgres"] == 0:
            problems.append("no group has the postgres role: add one")
        elif counts["postgres"] < 2 and not self.single_node:
            problems.append(
                f"{counts['postgres']} postgres node: failover needs at least 2 (3 recommended): "
                "raise the postgres group's count, or set single_node: true to accept no failover"
            )
        if counts["haproxy"] == 0:
            problems.append(
                "no group has the haproxy role: add it to a group (e.g. the wordpress group, "
                "so the database path has no single point of failure)"
            )
        if not dupes:
            for node in self.nodes():
                if len(node.name) > _HOSTNAME_MAX:
                    problems.append(
                        f"droplet name {node.name!r} is longer than {_HOSTNAME_MAX} characters: "
                        "shorten the stack or group name"
                    )
                    break
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- derived -------------------------------------------------------------------------

    @property
    def stack_tag(self) -> str:
        return f"lifeboat:{self.name}"

    @property
    def resource_name(self) -> str:
        """The name of the stack's VPC, SSH key, firewall, load balancer and etcd cluster
        token, and of its Spaces bucket unless `backup.bucket` names one."""
        return resource_name(self.name)

    @property
    def web_firewall_name(self) -> str:
        return f"{self.resource_name}-web"

    @property
    def drill_tag(self) -> str:
        """The tag of a restore drill's scratch droplet: not the stack's, so the stack's
        inventory, firewall and load balancer never include it."""
        return f"lifeboat-drill:{self.name}"

    @property
    def drill_droplet_name(self) -> str:
        return f"{self.name}-drill"

    @property
    def drill_firewall_name(self) -> str:
        return f"{self.resource_name}-drill"

    @property
    def backup_limit_name(self) -> str:
        """The Prefect global concurrency limit that lets one backup of the stack run."""
        return f"lifeboat-backup-{self.name}"

    @property
    def bucket(self) -> str:
        return self.backup.bucket or self.resource_name

    @property
    def synchronous_mode(self) -> bool:
        return self.replication == "synchronous"

    def nodes(self) -> list[PlannedNode]:
        """Every droplet, named `<stack>-<group>-<n>` (n from 1), tagged with the stack and
        each of its roles (`role:*` tags are shared across stacks: always filter by both)."""
        return [
            PlannedNode(
                name=f"{self.name}-{group.name}-{i}",
                group=group.name,
                size=group.size,
                roles=group.roles,
                tags=(self.stack_tag, *(f"role:{r}" for r in group.roles)),
            )
            for group in self.groups
            for i in range(1, group.count + 1)
        ]

    def nodes_with(self, role: str) -> list[PlannedNode]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: roles are {', '.join(ROLES)}")
        return [n for n in self.nodes() if role in n.roles]

    def check_catalog(self, regions: set[str], sizes: set[str]) -> None:
        """Check region and sizes against what the API offers (the provision flow passes the
        lists from /v2/regions and /v2/sizes); raise SpecError saying what to choose."""
        problems = []
        if self.region not in regions:
            problems.append(
                f"region {self.region!r} is not offered: choose one of {', '.join(sorted(regions))}"
            )
        for group in self.groups:
            if group.size not in sizes:
                problems.append(
                    f"group {group.name!r}: size {group.size!r} is not offered: choose one of "
                    f"{', '.join(sorted(sizes))}"
                )
        if problems:
            raise SpecError("; ".join(problems))

    # --- loading -------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> StackSpec:
        """Load and validate a spec file. Every way it can fail is a SpecError whose message
        names the file (and the line or key) and says what to change; `.problems` holds
        one line per problem."""
        path = Path(path)
        data = _read_yaml(path)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(*(f"{path}: {p}" for p in problems(e))) from None


def _read_yaml(path: Path) -> dict:
    """The file's top-level mapping; a SpecError for anything else."""
    example = "examples/compact.yaml"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        msg = f"{path}: no such file: give the path of a stack spec, e.g. {example}"
        raise SpecError(msg) from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory: give a spec file in it, e.g. {example}") from None
    except PermissionError:
        raise SpecError(
            f"{path}: permission denied: make it readable by this user, or run as its owner"
        ) from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read ({exc.strerror or exc}): check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            f"{path}: line {line}, column {column}: not UTF-8 (byte 0x{raw[exc.start]:02x}): "
            "save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(exc.problem or exc.context or "syntax error").split())
        if isinstance(exc, _DuplicateKey):
            raise SpecError(f"{path}: {where}{what}") from None
        raise SpecError(f"{path}: {where}not valid YAML ({what}): fix it there") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        raise SpecError(f"{path}: is empty: write a stack spec, e.g. like {example}")
    if not isinstance(data, dict):
        raise SpecError(
            f"{path}: expected a mapping at the top level (name:, region:, groups:, ...), "
            f"found a {type(data).__name__}: see {example}"
        )
    return data


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last one silently, so a spec could say two things and mean one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may override on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if line != key_node.start_mark.line:
                raise _DuplicateKey(
                    None,
                    None,
                    f"key {key!r} given twice (first on line {line + 1}): keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


class SpecError(ValueError):
    """A spec that cannot be built; the message says what to change. `problems` holds one
    line per problem; the message joins them."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


def problems(error: ValidationError) -> list[str]:
    """One line per problem, `key.path: message`, without pydantic's input dumps."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing: add it (see examples/compact.yaml)"
        elif err["type"] == "extra_forbidden":
            msg = "not a key Lifeboat knows (a typo?): remove or rename it"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def format_errors(error: ValidationError) -> str:
    """The problems of `error` on one line."""
    return "; ".join(problems(error))


def resource_name(stack: str) -> str:
    """Stack `stack`'s resource name (StackSpec.resource_name): its default bucket too."""
    return f"lifeboat-{stack}"


class StackSpecBlock(Block):
    """A stack spec stored in Prefect, so deployments can name it instead of a file path."""

    _block_type_name = "Lifeboat Stack Spec"
    _description = "What a Lifeboat stack is made of: droplets, roles, timers, ports."

    spec: StackSpec
