"""The web tier on the wordpress droplets: nginx + php-fpm, WordPress core (+ PG4WP),
wp-config.php, Lifeboat's health endpoint; the WordPress database and role on the primary;
the load balancer's membership during a rollout.

Two sources of WordPress core, chosen by the spec's `wordpress.source`:
- "release" (DigitalOcean): WordPress and PG4WP fetched on the droplet from their pinned
  URLs, checked against their pinned SHA-256 before anything is unpacked
  (templates/wordpress/fetch-release.sh), assembled into
  /var/www/lifeboat/releases/wordpress-<v>-pg4wp-<v>, switched in by a symlink.
- "debian-package" (e.g. the local cloud, which has no internet): Debian's `wordpress`
  package from the image; PG4WP is absent, so WordPress itself cannot install on
  PostgreSQL there.
Either way nginx serves /var/www/lifeboat/wordpress (a symlink to the release).

Every secret reaches the droplet in a file placed by `put`, never on a command line.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING

import pydo
from fabric import Connection
from invoke.runners import Result
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.secrets import WORDPRESS_ADMIN, WORDPRESS_DB, WORDPRESS_SALTS
from blocks.stack import StackSpec
from lifeboat.waiting import NotYet, WaitTimeout, wait_until
from tasks import backup, curl, droplets, site
from tasks.hosts import Host, put, run
from tasks.render import DESTINATIONS, TEMPLATES, render
from tasks.sql import ensure_login_role, psql, query, through_haproxy
from tasks.wal import config_context

if TYPE_CHECKING:
    from tasks.context import StackContext

PHP_FPM = "php8.2-fpm"  # Debian 12's
PHP_SOCKET = "/run/php/php8.2-fpm.sock"
SERVICES = ("nginx", PHP_FPM)
# The media agent (templates/wordpress/media_agent.py): wp-content/uploads kept in the
# stack's bucket, on every web droplet of the `release` source. Its files, in the order they
# are placed (it imports the first two).
MEDIA_UNIT = "lifeboat-media"
# WordPress's scheduled tasks, off the request path (DISABLE_WP_CRON): a timer per droplet.
CRON_TIMER = "lifeboat-wp-cron.timer"
CRON_TEMPLATES = ("wordpress/lifeboat-wp-cron.service.j2", "wordpress/lifeboat-wp-cron.timer.j2")
PHP_INI = "wordpress/php-lifeboat.ini"  # persistent PG4WP connections (php-fpm reloads)
# Lifeboat's one edit to PG4WP: persistent connections (see templates/wordpress/php-lifeboat.ini).
# PG4WP 3.4 connects twice per request (wpsqli_real_connect, then wpsqli_select_db).
PG4WP_CONNECTS = 2
MEDIA_TEMPLATES = (
    "wal/spaces_layout.py",
    "wal/spaces_client.py",
    "wordpress/media_agent.py",
    "wordpress/media.conf.j2",
    "wordpress/lifeboat-media.service.j2",
)
BASE = "/var/www/lifeboat"
DOCROOT = f"{BASE}/wordpress"  # symlink to the active release
RELEASES = f"{BASE}/releases"
UPLOADS = f"{BASE}/uploads"  # shared by every release (wp-content/uploads links here)
DEBIAN_CORE = "/usr/share/wordpress"
DEBIAN_CONTENT = "/var/lib/wordpress"  # Debian's WP_CONTENT_DIR is <this>/wp-content
DEBIAN_CONFIG = "lifeboat"  # Debian's loader reads /etc/wordpress/config-<this>.php
DEBIAN_WP_CONFIG = f"/etc/wordpress/config-{DEBIAN_CONFIG}.php"
SITE = DESTINATIONS["wordpress/nginx-site.conf.j2"][0]
SITE_ENABLED = "/etc/nginx/sites-enabled/lifeboat"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
HEALTH_SCRIPT = DESTINATIONS["wordpress/lifeboat-health.php"][0]
FETCH = DESTINATIONS["wordpress/fetch-release.sh"][0]
WP_PGPASS = site.WP_PGPASS
HEALTH_TABLE = "lifeboat_health"


class WordPressError(RuntimeError):
    pass


def debian_package(spec: StackSpec) -> bool:
    """WordPress core from Debian's package, no PG4WP (`wordpress.source`)."""
    return spec.wordpress.source == "debian-package"


def services(spec: StackSpec) -> tuple[str, ...]:
    """The units a web droplet runs (with the `release` source, the media agent and
    WordPress's scheduled tasks too)."""
    return SERVICES if debian_package(spec) else (*SERVICES, MEDIA_UNIT, CRON_TIMER)


def source_note(spec: StackSpec) -> str:
    v = spec.wordpress.versions
    if debian_package(spec):
        return (
            "wordpress.source debian-package: WordPress core comes from Debian's `wordpress` "
            f"package in the image and PG4WP {v.pg4wp.version} is absent, so WordPress itself "
            "cannot install on PostgreSQL in this stack; nginx, php-fpm, wp-config.php, the "
            "database and role and the health endpoint (a write and a read through HAProxy) "
            "are still deployed and checked"
        )
    return (
        f"WordPress {v.wordpress.version} and PG4WP {v.pg4wp.version} from their pinned URLs, "
        "checked against their pinned SHA-256 before unpacking"
    )


def check_pins(spec: StackSpec) -> None:
    """Downloads need a checksum: refuse before touching any droplet."""
    missing = [
        name
        for name, pin in (
            ("wordpress", spec.wordpress.versions.wordpress),
            ("pg4wp", spec.wordpress.versions.pg4wp),
        )
        if not pin.sha256
    ]
    if missing:
        raise WordPressError(
            f"wordpress.versions.{'/'.join(missing)}.sha256 not set: download the archive on a "
            "trusted machine, compare it with the publisher's checksum, and put its "
            "`sha256sum` in the spec (Lifeboat never unpacks an unverified archive)"
        )


def release_dir(spec: StackSpec) -> str:
    v = spec.wordpress.versions
    return f"{RELEASES}/wordpress-{v.wordpress.version}-pg4wp-{v.pg4wp.version}"


def core_dir(spec: StackSpec) -> str:
    return DEBIAN_CORE if debian_package(spec) else release_dir(spec)


def db_address(spec: StackSpec, host: Host, haproxy_hosts: list[Host]) -> tuple[str, int]:
    """HAProxy's primary port: on this droplet when it runs HAProxy, else the first
    HAProxy droplet's private address."""
    port = spec.haproxy.primary_port
    if "haproxy" in host.roles:
        return "127.0.0.1", port
    if not haproxy_hosts:
        raise WordPressError(f"stack {spec.name} has no haproxy droplet for {host.name}")
    return haproxy_hosts[0].private_ip, port


# --- files ---------------------------------------------------------------------------------


def php_str(value: object) -> str:
    """A PHP single-quoted string literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class File:
    path: str
    content: str
    mode: str
    owner: str


def _file(template: str, content: str, path: str | None = None, release: str = "") -> File:
    dest, owner, mode = DESTINATIONS[template]
    return File(path or dest.format(release=release), content, mode, owner)


def render_site(spec: StackSpec, debian: bool) -> str:
    return render(
        "wordpress/nginx-site.conf.j2",
        domain=spec.wordpress.site_domain(spec.name),
        docroot=DOCROOT,
        health_path=droplets.WEB_HEALTH_PATH,
        health_script=HEALTH_SCRIPT,
        php_socket=PHP_SOCKET,
        debian_config=DEBIAN_CONFIG if debian else "",
    )


def render_wp_config(
    spec: StackSpec, db_host: str, password: str, salts: dict[str, str], abspath: str | None
) -> str:
    """`abspath` None: Debian's loader includes this file and then wp-settings.php itself."""
    wp = spec.wordpress
    domain = wp.site_domain(spec.name)
    return render(
        "wordpress/wp-config.php.j2",
        domain=domain,
        salts=salts,
        php_str=php_str,
        standalone=abspath is not None,
        php={
            "db_name": php_str(wp.db_name),
            "db_user": php_str(wp.db_user),
            "db_password": php_str(password),
            "db_host": php_str(db_host),
            "table_prefix": php_str(wp.table_prefix),
            "home": php_str(f"http://{domain}"),
            "abspath": php_str(f"{abspath}/" if abspath else ""),
            "dropin": php_str(f"{abspath or DEBIAN_CONTENT}/wp-content/db.php"),
        },
    )


def render_db_settings(spec: StackSpec, host: str, port: int, password: str) -> str:
    wp = spec.wordpress
    return render(
        "wordpress/wordpress-db.php.j2",
        php={
            "host": php_str(host),
            "port": str(port),
            "db_name": php_str(wp.db_name),
            "db_user": php_str(wp.db_user),
            "db_password": php_str(password),
        },
    )


def site_files(
    spec: StackSpec,
    host: Host,
    haproxy_hosts: list[Host],
    password: str,
    salts: dict[str, str],
    spaces: dict[str, str] | None = None,
) -> list[File]:
    """Every file the web tier places on `host`. `spaces` (endpoint, region, keys): the
    media agent's settings, needed with the `release` source."""
    debian = debian_package(spec)
    db_host, port = db_address(spec, host, haproxy_hosts)
    dsn_host = f"{db_host}:{port}"
    if debian:
        config = _file(
            "wordpress/wp-config.php.j2",
            render_wp_config(spec, dsn_host, password, salts, None),
            DEBIAN_WP_CONFIG,
        )
    else:
        config = _file(
            "wordpress/wp-config.php.j2",
            render_wp_config(spec, dsn_host, password, salts, DOCROOT),
        )
    files = [
        _file("wordpress/nginx-site.conf.j2", render_site(spec, debian)),
        config,
        _file("wordpress/wordpress-db.php.j2", render_db_settings(spec, db_host, port, password)),
        _file("wordpress/lifeboat-health.php", render("wordpress/lifeboat-health.php")),
    ]
    if not debian:
        rel = release_dir(spec)
        release_config = render(
            "wordpress/wp-config-release.php.j2",
            release=rel,
            docroot=DOCROOT,
            config=DESTINATIONS["wordpress/wp-config.php.j2"][0],
        )
        files += [
            _file("wordpress/fetch-release.sh", render("wordpress/fetch-release.sh")),
            _file("wordpress/db.php", render("wordpress/db.php"), release=rel),
            _file("wordpress/wp-config-release.php.j2", release_config, release=rel),
        ]
        files += media_files(spec, spaces)
        files += [_file(t, render(t, docroot=DOCROOT)) for t in CRON_TEMPLATES]
        files.append(_file(PHP_INI, render(PHP_INI)))
    return files


def media_files(spec: StackSpec, spaces: dict[str, str] | None) -> list[File]:
    if spaces is None:
        raise WordPressError("the release source needs the stack's Spaces settings (media)")
    content = {
        "wordpress/media.conf.j2": render(
            "wordpress/media.conf.j2", **config_context(spec, spaces)
        ),
        "wordpress/lifeboat-media.service.j2": render(
            "wordpress/lifeboat-media.service.j2", uploads_dir=UPLOADS
        ),
    }
    return [
        _file(t, content[t] if t in content else (TEMPLATES / t).read_text())
        for t in MEDIA_TEMPLATES
    ]


# --- what differs on a droplet -------------------------------------------------------------


@dataclass
class Drift:
    """What a droplet lacks against the desired state; empty when it needs nothing."""

    files: list[str] = field(default_factory=list)
    link: bool = False  # DOCROOT does not point at the release
    site: bool = False  # our site not enabled, or Debian's default site still enabled
    stopped: list[str] = field(default_factory=list)  # services not active or not enabled

    def __bool__(self) -> bool:
        return bool(self.files or self.link or self.site or self.stopped)

    def describe(self) -> str:
        parts = []
        if self.files:
            parts.append("files " + ", ".join(self.files))
        if self.link:
            parts.append(f"{DOCROOT} release link")
        if self.site:
            parts.append("nginx site")
        if self.stopped:
            parts.append("not running/enabled: " + ", ".join(self.stopped))
        return "; ".join(parts)


def _digest(file: File) -> str:
    return f"{int(file.mode, 8):o} {file.owner} {hashlib.sha256(file.content.encode()).hexdigest()}"


def drift(
    conn: Connection, files: list[File], target: str, units: tuple[str, ...] = SERVICES
) -> Drift:
    """One SSH round trip: each file's mode, owner and checksum, the release link, the
    enabled sites, the services."""
    lines = [
        f"echo \"$(stat -c '%a %U:%G' {shlex.quote(f.path)} 2>/dev/null || echo missing) "
        f"$(sha256sum {shlex.quote(f.path)} 2>/dev/null | cut -d' ' -f1)\""
        for f in files
    ]
    lines.append(f"readlink {DOCROOT} || echo none")
    lines.append(f"readlink {SITE_ENABLED} || echo none")
    lines.append(f"[ -e {DEFAULT_SITE} ] && echo default || echo nodefault")
    lines += [
        f"systemctl is-active --quiet {s} && systemctl is-enabled --quiet {s} && echo up "
        "|| echo down"
        for s in units
    ]
    out = run(conn, "\n".join(lines), timeout=60).stdout.splitlines()
    found = Drift()
    for f, line in zip(files, out, strict=False):
        if line.strip() != _digest(f):
            found.files.append(f.path)
    rest = out[len(files) :]
    found.link = rest[0].strip() != target
    found.site = rest[1].strip() != SITE or rest[2].strip() == "default"
    found.stopped = [s for s, st in zip(units, rest[3:], strict=True) if st.strip() != "up"]
    return found


# --- deploy --------------------------------------------------------------------------------


def ensure_release(conn: Connection, spec: StackSpec) -> bool:
    """Download mode: WordPress and PG4WP fetched and verified by fetch-release, assembled
    into the release directory and checked (PG4WP's code, the spec's theme) before it is
    marked complete, last, so a crash is redone. A bad release is removed and the link is
    never moved to it. Returns whether it was built."""
    rel = release_dir(spec)
    done = f"{rel}/.lifeboat-complete"
    if run(conn, f"test -e {done}", warn=True, timeout=30).ok:
        _check_theme(conn, spec, rel)
        return False
    fetch = _file("wordpress/fetch-release.sh", render("wordpress/fetch-release.sh"))
    put(conn, fetch.path, fetch.content, fetch.mode, fetch.owner)
    v = spec.wordpress.versions
    q = shlex.quote
    discard = f"rm -rf {q(rel)} {q(rel + '.pg4wp')}"  # a half-built or refused release
    run(conn, discard, timeout=120)
    for pin, dest in ((v.wordpress, rel), (v.pg4wp, rel + ".pg4wp")):
        res = run(
            conn, f"{FETCH} {q(pin.url)} {q(pin.sha256 or '')} {q(dest)}", warn=True, timeout=900
        )
        if not res.ok:
            run(conn, discard, warn=True, timeout=120)
            raise WordPressError(f"fetching {pin.url} failed: {last_line(res)}")
    checks = {
        f"{rel}/wp-settings.php": f"{v.wordpress.url} is not a WordPress release (no "
        "wp-settings.php at its top)",
        f"{rel}.pg4wp/pg4wp/db.php": f"{v.pg4wp.url} is not a PG4WP release (no pg4wp/db.php)",
    }
    for path, problem in checks.items():
        if not run(conn, f"test -f {q(path)}", warn=True, timeout=30).ok:
            run(conn, discard, warn=True, timeout=120)
            raise WordPressError(f"{problem}; nothing switched")
    try:
        _check_theme(conn, spec, rel)
    except WordPressError:
        run(conn, discard, warn=True, timeout=120)
        raise
    driver = q(f"{rel}.pg4wp/pg4wp/driver_pgsql.php")
    call = "= pg_connect($pg_connstr)"
    edited = run(
        conn,
        f"sed -i {q(f's/{call}/= pg_pconnect($pg_connstr)/')} {driver} && "
        f"grep -cF {q('= pg_pconnect($pg_connstr)')} {driver}",
        warn=True,
        timeout=30,
    )
    if edited.stdout.strip() != str(PG4WP_CONNECTS):
        run(conn, discard, warn=True, timeout=120)
        raise WordPressError(
            f"{v.pg4wp.url}: expected {PG4WP_CONNECTS} pg_connect calls in pg4wp/driver_pgsql.php "
            f"to make persistent, found {edited.stdout.strip() or 'none'}: review Lifeboat's "
            "edit for this PG4WP version (tasks/wordpress.py); nothing switched"
        )
    # PG4WP's code where its loader looks (wp-content/pg4wp); Lifeboat's db.php loads it.
    # Uploads live outside the release, shared by every release (and kept in Spaces).
    run(
        conn,
        f"mv {q(rel + '.pg4wp')}/pg4wp {q(rel)}/wp-content/pg4wp && rm -rf {q(rel + '.pg4wp')} && "
        f"install -d -o www-data -g www-data -m 0755 {UPLOADS} && "
        f"rm -rf {q(rel)}/wp-content/uploads && ln -s {UPLOADS} {q(rel)}/wp-content/uploads && "
        f"touch {done}",
        timeout=120,
    )
    return True


def _check_theme(conn: Connection, spec: StackSpec, rel: str) -> None:
    """The spec's theme is in the release (checked on every rollout: the theme may change
    while the release stays)."""
    theme = spec.wordpress.theme
    style = shlex.quote(f"{rel}/wp-content/themes/{theme}/style.css")
    if not run(conn, f"test -f {style}", warn=True, timeout=30).ok:
        raise WordPressError(
            f"{spec.wordpress.versions.wordpress.url} has no theme {theme!r} "
            f"(wp-content/themes/{theme}): pick a theme it carries in wordpress.theme; "
            "nothing switched"
        )


def deploy(
    conn: Connection, files: list[File], target: str, units: tuple[str, ...] = SERVICES
) -> list[str]:
    """Converge one droplet (its release, if downloaded, is already built); reload or start
    only what needs it. Returns what was done."""
    done: list[str] = []
    changed = [f.path for f in files if put(conn, f.path, f.content, f.mode, f.owner)]
    if changed:
        done.append("files " + ", ".join(changed))
    if run(conn, f'[ "$(readlink {DOCROOT})" = {shlex.quote(target)} ]', warn=True).ok is False:
        run(
            conn,
            f"mkdir -p {BASE} && ln -sfn {shlex.quote(target)} {DOCROOT}.new && "
            f"mv -T {DOCROOT}.new {DOCROOT}",
        )
        done.append(f"{DOCROOT} -> {target}")
    site_changed = SITE in changed
    if (
        run(
            conn, f'[ "$(readlink {SITE_ENABLED})" = {SITE} ] && [ ! -e {DEFAULT_SITE} ]', warn=True
        ).ok
        is False
    ):
        run(conn, f"ln -sfn {SITE} {SITE_ENABLED} && rm -f {DEFAULT_SITE}")
        site_changed = True
        done.append("nginx site enabled")
    if site_changed:
        check = run(conn, "nginx -t -q", warn=True, timeout=60)
        if not check.ok:
            raise WordPressError(f"nginx -t rejected the site: {check.stderr.strip()}")
    restart = {
        unit
        for unit, templates in ((MEDIA_UNIT, MEDIA_TEMPLATES), (CRON_TIMER, CRON_TEMPLATES))
        if {DESTINATIONS[t][0] for t in templates} & set(changed)
    }
    if restart:
        run(conn, "systemctl daemon-reload", timeout=60)
    for service in units:
        done += _service(
            conn,
            service,
            reload=(service == "nginx" and site_changed)
            or (service == PHP_FPM and DESTINATIONS[PHP_INI][0] in changed),
            restart=service in restart,
        )
    return done


def last_line(res: Result) -> str:
    """The last line a failed command printed (stderr first): its reason, short."""
    lines = (res.stderr or res.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {res.exited}, no output"


def _service(conn: Connection, service: str, reload: bool, restart: bool = False) -> list[str]:
    active = run(conn, f"systemctl is-active --quiet {service}", warn=True, timeout=30).ok
    enabled = run(conn, f"systemctl is-enabled --quiet {service}", warn=True, timeout=30).ok
    if active and enabled and not (reload or restart):
        return []
    cmd = f"systemctl enable --quiet {service}" if not enabled else ""
    verb = "start" if not active else "restart" if restart else "reload"
    if not active or restart or reload:
        cmd += f"{' && ' if cmd else ''}systemctl {verb} {service}"
    # The media agent's start returns once it has every object (the first, on a new
    # droplet, fetches the whole library): it is in before the droplet joins the site.
    res = run(conn, cmd, warn=True, timeout=1800 if service == MEDIA_UNIT else 90)
    if not res.ok:
        raise WordPressError(f"{service} could not be started: {last_line(res)}")
    return [{"start": "started ", "restart": "restarted ", "reload": "reloaded "}[verb] + service]


# --- health --------------------------------------------------------------------------------


def parse_health(code: int, body: str) -> tuple[bool, str]:
    """(healthy, what the endpoint said): 200 with ok, a write and a read."""
    try:
        data = json.loads(body)
    except ValueError:
        return False, f"HTTP {code}, not JSON: {body.strip()[:200]!r}"
    if not isinstance(data, dict):
        return False, f"HTTP {code}: {body.strip()[:200]!r}"
    healthy = (
        code == 200 and data.get("ok") is True and data.get("write") == data.get("read") == "ok"
    )
    return healthy, f"HTTP {code}: {json.dumps(data, sort_keys=True)}"


def local_health(conn: Connection, spec: StackSpec) -> tuple[int, str]:
    """The health endpoint asked on the droplet itself (the firewall admits HTTP from the
    load balancer only), with the site's Host header."""
    answer = curl.get(
        conn,
        f"http://127.0.0.1{droplets.WEB_HEALTH_PATH}",
        headers={"Host": spec.wordpress.site_domain(spec.name)},
        max_time=8,
        timeout=30,
    )
    return answer.status, answer.body


def wait_local_health(conn: Connection, spec: StackSpec, name: str, timeout: float = 45) -> str:
    """The rollout's gate: the droplet's own health endpoint reports a write and a read."""

    def passes() -> str:
        healthy, said = parse_health(*local_health(conn, spec))
        if healthy:
            return said
        raise NotYet(said)

    try:
        return wait_until(f"{name}'s health gate", passes, timeout, every=1)
    except WaitTimeout as e:
        raise WordPressError(f"{name} failed its health gate after {timeout:.0f}s: {e.last}") from e


def http_get(
    url: str, timeout: float = 8, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """GET from the orchestrator: (status, headers with lowercase names and repeated ones
    joined by ", ", body); status 0 when unreachable."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, _headers(resp.headers), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, _headers(exc.headers), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, {}, str(exc)


def _headers(message: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


# --- the database --------------------------------------------------------------------------


def _psql(
    conn: Connection, port: int, user: str, db: str, passfile: str, sql: str = "", file: str = ""
) -> str:
    target = through_haproxy(port, user, db, passfile)
    res = psql(conn, sql or None, target, file=file or None, timeout=60, warn=True)
    if not res.ok:
        raise WordPressError(
            f"psql as {user} to {db} through {conn.host}:{port} failed: {last_line(res)}"
        )
    return res.stdout.strip()


def _can_login(conn: Connection, spec: StackSpec) -> bool:
    wp = spec.wordpress
    try:
        return (
            _psql(conn, spec.haproxy.primary_port, wp.db_user, wp.db_name, WP_PGPASS, "SELECT 1")
            == "1"
        )
    except WordPressError:
        return False


def prepare_database(
    conn: Connection, primary: Connection, spec: StackSpec, password: str
) -> list[str]:
    """On the primary (`primary`, over its socket as postgres: no superuser credential
    leaves the database droplets): the WordPress role (login, nothing else), its database
    (owned by it, closed to PUBLIC), the role's password in step with the Secret block.
    Then, through HAProxy's primary port on this (haproxy) droplet as that role, the
    health table. Returns what changed."""
    wp, port = spec.wordpress, spec.haproxy.primary_port
    role, dbname = wp.db_user, wp.db_name

    def q(sql: str) -> str:
        return query(primary, sql)

    def as_role(sql: str) -> str:
        return _psql(conn, port, role, dbname, WP_PGPASS, sql)

    put(conn, WP_PGPASS, f"127.0.0.1:{port}:{dbname}:{role}:{password}\n", "0600", "root:root")
    done = ensure_login_role(primary, role, password)
    owner = q(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{dbname}'")
    if not owner:
        q(f"CREATE DATABASE {dbname} OWNER {role} TEMPLATE template0 ENCODING 'UTF8'")
        done.append(f"created database {dbname}")
    elif owner != role:
        q(f"ALTER DATABASE {dbname} OWNER TO {role}")
        done.append(f"database {dbname} now owned by {role}")
    # Other roles may not connect to WordPress's database (PUBLIC has CONNECT by default).
    acl = (
        "SELECT coalesce(array_to_string(datacl, ','), '=') ~ '(^|,)=' "
        f"FROM pg_database WHERE datname = '{dbname}'"
    )
    if q(acl) == "t":
        q(f"REVOKE ALL ON DATABASE {dbname} FROM PUBLIC; GRANT ALL ON DATABASE {dbname} TO {role}")
        done.append(f"closed {dbname} to PUBLIC")
    if not _can_login(conn, spec):
        raise WordPressError(f"{role} cannot log in to {dbname} through HAProxy after setup")
    if as_role(f"SELECT to_regclass('public.{HEALTH_TABLE}') IS NULL") == "t":
        as_role(
            f"CREATE TABLE IF NOT EXISTS public.{HEALTH_TABLE} (host text PRIMARY KEY, "
            "token text NOT NULL, written_at timestamptz NOT NULL)"
        )
        done.append(f"created table {HEALTH_TABLE}")
    return done


# --- the load balancer ---------------------------------------------------------------------


def load_balancer(do: pydo.Client, spec: StackSpec) -> dict:
    name = spec.resource_name
    for lb in droplets.paged(do.load_balancers.list, "load_balancers"):
        if lb["name"] == name:
            return lb
    raise WordPressError(f"load balancer {name} not found: run the provision runbook first")


def lb_members(do: pydo.Client, lb_id: str) -> list[int]:
    lb = droplets.call("reading the load balancer", do.load_balancers.get, lb_id=lb_id)
    return list(lb["load_balancer"].get("droplet_ids", []))


def lb_remove(do: pydo.Client, lb_id: str, droplet_id: int) -> None:
    droplets.call(
        "removing a droplet from the load balancer",
        do.load_balancers.remove_droplets,
        lb_id=lb_id,
        body={"droplet_ids": [droplet_id]},
    )


def lb_add(do: pydo.Client, lb_id: str, droplet_id: int) -> None:
    droplets.call(
        "adding a droplet to the load balancer",
        do.load_balancers.add_droplets,
        lb_id=lb_id,
        body={"droplet_ids": [droplet_id]},
    )


def lb_health_url(lb: dict) -> str:
    return f"http://{lb['ip']}{droplets.WEB_HEALTH_PATH}"


def wait_lb_routes_to(lb: dict, name: str, timeout: float = 90) -> str:
    """Until a request through the load balancer's address is answered, healthy, by
    droplet `name`: proof the load balancer has taken it back."""
    url = lb_health_url(lb)

    def answered_by_it() -> str:
        code, _, body = http_get(url)
        healthy, said = parse_health(code, body)
        if healthy and json.loads(body).get("host") == name:
            return said
        raise NotYet(said)

    try:
        return wait_until(f"the load balancer to route to {name}", answered_by_it, timeout, 0.5)
    except WaitTimeout as e:
        raise WordPressError(
            f"the load balancer did not route to {name} within {timeout:.0f}s although "
            "its own health endpoint passed: the load balancer cannot reach it on port 80 "
            f"(web firewall, routing) or keeps it marked down; last answer {e.last}"
        ) from e


# --- Prefect tasks -------------------------------------------------------------------------


@task(name="database", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def database(stack: StackContext, host: Host) -> list[str]:
    """The WordPress database and role, on the primary; checked through HAProxy on `host`."""
    secrets = stack.wordpress_secrets
    leader = backup.leader_host(stack.remote, stack.with_role("postgres"))
    with stack.remote.connect(host) as conn, stack.remote.connect(leader) as primary:
        return prepare_database(conn, primary, stack.spec, secrets[WORDPRESS_DB])


# Gates: retrying would only wait longer or redo a half rollout; fail with the reason.
@task(name="roll_one", cache_policy=NO_CACHE, retries=0)
def roll_one(stack: StackContext, lb: dict, host: Host) -> dict:
    """One droplet through the gate. Returns {"outcome", "seconds"}."""
    log = get_run_logger()
    t0 = time.monotonic()
    spec, do, secrets = stack.spec, stack.do, stack.wordpress_secrets
    salts = {k: secrets[k] for k in WORDPRESS_SALTS}
    spaces = None if debian_package(spec) else stack.spaces_settings().reveal()
    files = site_files(spec, host, stack.with_role("haproxy"), secrets[WORDPRESS_DB], salts, spaces)
    units = services(spec)
    target = core_dir(spec)
    in_lb = host.droplet_id in lb_members(do, lb["id"])
    with stack.remote.connect(host) as conn:
        # A release is fetched, verified and checked while the droplet still serves the
        # old one: a bad release stops the rollout here, before anything is switched.
        built = []
        try:
            if not debian_package(spec) and ensure_release(conn, spec):
                built = [f"release {target} built"]
        except WordPressError as exc:
            raise WordPressError(
                f"rollout stopped at {host.name}, which still serves its old release: {exc}"
            ) from None
        differs = drift(conn, files, target, units)
        if not differs and in_lb:
            wait_local_health(conn, spec, host.name, timeout=15)
            return {"outcome": "unchanged", "seconds": round(time.monotonic() - t0, 1)}
        if differs:
            log.info(
                "%s differs (%s): out of the load balancer to deploy", host.name, differs.describe()
            )
            if in_lb:
                lb_remove(do, lb["id"], host.droplet_id)
        try:
            done = built + (deploy(conn, files, target, units) if differs else [])
            wait_local_health(conn, spec, host.name)
        except WordPressError as exc:
            # The droplet stays out of the load balancer; the ones before it serve.
            raise WordPressError(
                f"rollout stopped at {host.name}, left out of the load balancer: {exc}"
            ) from None

    lb_add(do, lb["id"], host.droplet_id)
    wait_lb_routes_to(lb, host.name)
    what = "; ".join(done) if done else "put back in the load balancer"
    return {"outcome": f"changed: {what}", "seconds": round(time.monotonic() - t0, 1)}


@task(name="verify_site", cache_policy=NO_CACHE, retries=0)
def verify_site(lb: dict, spec: StackSpec) -> dict[str, str]:
    """Through the load balancer's address: the health endpoint (a write and a read
    through HAProxy), wp-config never served, static files cached long; and what
    WordPress core answers."""
    base = f"http://{lb['ip']}"
    code, headers, body = http_get(lb_health_url(lb))
    healthy, said = parse_health(code, body)
    if not healthy:
        raise WordPressError(f"health endpoint through the load balancer: {said}")
    if "no-store" not in headers.get("cache-control", ""):
        raise WordPressError("the health endpoint is cacheable (no Cache-Control: no-store)")
    result = {"health": f"{said} via {base}"}
    for path in ("/wp-config.php", "/wp-config-sample.php", "/.htaccess"):
        code, _, _ = http_get(base + path)
        if code != 403:
            raise WordPressError(f"{base}{path} answered {code}, expected 403")
    result["denied"] = "wp-config*.php and dotfiles answer 403"
    code, headers, _ = http_get(f"{base}/wp-includes/css/dashicons.min.css")
    if code != 200 or "max-age=31536000" not in headers.get("cache-control", ""):
        raise WordPressError(
            f"static asset answered {code} with Cache-Control {headers.get('cache-control')!r}"
        )
    result["static"] = "served with a one-year Cache-Control"
    result["wordpress"] = _core_answer(base, spec)
    return result


def _core_answer(base: str, spec: StackSpec) -> str:
    """What `/` says. Without PG4WP (Debian's package) wp-config.php refuses with 503 before
    WordPress would speak MySQL to PostgreSQL: proof the request went through nginx,
    php-fpm and WordPress's config loader to our wp-config.php, and no further. With PG4WP,
    a fresh site answers (or redirects to its installer)."""
    code, _, body = http_get(base + "/")
    if debian_package(spec):
        if code == 503 and "PG4WP" in body:
            return (
                "WordPress core (Debian's package) served; wp-config.php loaded and stops at "
                "the missing PG4WP (503)"
            )
        raise WordPressError(f"/ did not reach wp-config.php: HTTP {code}: {body[:200]!r}")
    if code in (200, 301, 302):
        return f"WordPress answers HTTP {code}"
    raise WordPressError(f"WordPress answered / with HTTP {code}: {body[:200]!r}")


# --- the site: installed once, and the content probe ---------------------------------------


@task(name="install_site", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def install_site(stack: StackContext, db_host: Host, web_host: Host) -> str:
    """WordPress installed once (title, administrator, theme from the spec). `db_host`
    runs HAProxy (where the WordPress role's pgpass is); `web_host` runs the installer."""
    spec = stack.spec
    wp = spec.wordpress
    with stack.remote.connect(db_host) as db:
        if site.installed(db, spec):
            if moved := site.adopt(db, spec, stack.wordpress_secrets[WORDPRESS_ADMIN]):
                return (
                    f"changed: the site of {moved} (a restored database) now answers as "
                    f"{site.site_url(spec)}, its administrator with this stack's password"
                )
            return f"unchanged: installed, theme {site.active_theme(db, spec)}"
        with stack.remote.connect(web_host) as web:
            site.install(web, spec, stack.wordpress_secrets[WORDPRESS_ADMIN])
        if not site.installed(db, spec):
            raise WordPressError("WordPress's installer said Success! but wrote no siteurl")
        site.set_theme(db, spec)
    return (
        f"changed: installed {wp.site_title(spec.name)!r} (administrator {wp.admin_user}, "
        f"theme {wp.theme}) on {web_host.name}"
    )


def read_probe(lb: dict, spec: StackSpec, written: dict[str, str]) -> str:
    """The probe post, read through the load balancer's address on the front page (with
    the theme) and by its own URL."""
    base = f"http://{lb['ip']}"
    host = {"Host": spec.wordpress.site_domain(spec.name)}
    theme_path = f"/wp-content/themes/{spec.wordpress.theme}/"
    code, _, body = http_get(base + "/", headers=host, timeout=30)
    if code != 200 or written["title"] not in body:
        raise WordPressError(
            f"front page through {base} (HTTP {code}) does not show the probe post "
            f"{written['title']!r}: {body[:200]!r}"
        )
    if theme_path not in body:
        raise WordPressError(f"front page through {base} does not use the theme ({theme_path})")
    path = site.path_of(written["link"])
    code, _, body = http_get(base + path, headers=host, timeout=30)
    if code != 200 or written["token"] not in body:
        raise WordPressError(
            f"probe post {path} through {base} answered HTTP {code} without its token: "
            f"{body[:200]!r}"
        )
    return f"post {written['id']} {written['title']!r} read back through {base} on / and {path}"


@task(name="probe", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def probe(stack: StackContext, lb: dict, web_host: Host) -> dict[str, str]:
    """The content probe: the probe post written through WordPress on `web_host`, read
    back through the load balancer. Returns the post ({"id", "title", "token", "link"})
    and what was read ("read")."""
    with stack.remote.connect(web_host) as conn:
        written = site.write_probe(conn, stack.spec, stack.wordpress_secrets[WORDPRESS_ADMIN])
    return written | {"read": read_probe(lb, stack.spec, written)}
