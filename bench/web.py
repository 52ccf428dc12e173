"""Benchmark of the web tier in the local cloud (not a test): WordPress on PostgreSQL
(PG4WP) against the same WordPress on MariaDB, through each site's load balancer, in one
run. Prints figures, asserts nothing.

    uv run python -m bench.web [--seconds 30] [--rounds 3] [--clients 1,16] [--posts 10]
                               [--keep] [--reuse]

Two sites, each two s-1vcpu-1gb web droplets (nginx + php-fpm, Debian's) behind its own
load balancer:
- PostgreSQL: stack `wbench` (examples/compact.yaml renamed, VPC 10.40.0.0/16: three
  Patroni/etcd droplets, two web droplets with HAProxy and the media agent), brought up by
  `flows.up.up` (WordPress with PG4WP, installed, the probe post);
- MariaDB: stack `wbmdb` (VPC 10.41.0.0/16), made here through the DigitalOcean API (the
  functions of tasks/droplets.py): one database droplet of the same size and image with
  Debian's mariadb-server (masked in the lab's image: unmasked, bound to the private
  address, skip-name-resolve, Debian's defaults otherwise) and two web droplets with the
  SAME WordPress release archive (URL and SHA-256 from the spec, fetched by fetch-release), without
  PG4WP or Lifeboat's db.php, the nginx site of tasks/wordpress.render_site, a plain
  MySQL wp-config (same salts, WP_HOME and constants style as Lifeboat's), a MySQL health
  endpoint at the load balancer's check path, and WordPress's own installer
  (tasks/site.install).
Both sites get the same --posts posts (titles and bodies) through XML-RPC, dated so they
fill the front page (10 posts a page), and the same title and theme. On every web droplet
of both sides the site's domain goes into /etc/hosts (127.0.0.1) and WP-Cron runs once
before measuring. Both wp-configs set DISABLE_WP_CRON (Lifeboat runs wp-cron.php from a
systemd timer): before it did, WP-Cron's loopback spawn stalled a page request for 10-20 s
every minute, the lab's resolver never answering for the site's domain.

Load: threads with keep-alive http.client connections to the load balancer's address, Host
header the site's domain; `/` and one post (`/?p=ID`), at each --clients count for
--seconds, after a short warm-up; requests/s, p50/p95 latency, errors (not 200, or the
page lacks the post's title). --rounds alternating rounds (PostgreSQL then MariaDB each
round); the table shows each side's median and min-max, and PostgreSQL/MariaDB of the
medians. The client runs on this host and shares its CPUs with every droplet.

When PostgreSQL's 16-client ratio is below 0.8 (or with --profile), a profile: a
temporary auto_prepend_file (hrtime, SAVEQUERIES) on every web droplet of both sides, and
on the PostgreSQL side PG4WP's code patched in place to time its connect, its rewrite
(pg4wp_rewrite) and pg_query, and its eval of class-wpdb.php; all put back afterwards.
Also connection set-up alone (php-cli on a web droplet: pg_connect through HAProxy vs
mysqli to MariaDB).

Both stacks are destroyed at the end unless --keep; --reuse keeps stacks that answer.
Secrets of the MariaDB twin live in Prefect Secret blocks `lifeboat-wbmdb-*` like a
stack's (deleted with it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import statistics
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pydo
from fabric import Connection

from blocks.credentials import DigitalOceanCredentials
from blocks.secrets import (
    WORDPRESS_ADMIN,
    WORDPRESS_DB,
    WORDPRESS_SALTS,
    new_password,
    secret_block_name,
    stack_secret,
)
from blocks.stack import StackSpec
from flows.up import up
from tasks import curl, droplets, site
from tasks import wordpress as wp
from tasks.context import StackContext
from tasks.hosts import Host, put, run, secret_file
from tasks.render import DESTINATIONS, render

PG, PG_VPC = "wbench", "10.40.0.0/16"
MDB, MDB_VPC = "wbmdb", "10.41.0.0/16"
TITLE = "Lifeboat bench"  # both sites' title
POST_TITLE = "Bench post"
SQL_FILE = "/root/.wbench-mariadb.sql"
MARIADB_CNF = "/etc/mysql/mariadb.conf.d/60-wbench.cnf"
HEALTH_TABLE = wp.HEALTH_TABLE
PROFILE_DIR = "/var/lib/wbench-profile"  # php-fpm (www-data) writes its lines here
PROFILE_PREPEND = "/usr/local/lib/lifeboat/wbench-prepend.php"
PROFILE_INI = "/etc/php/8.2/fpm/conf.d/99-wbench-profile.ini"
PG4WP_FILES = ("driver_pgsql.php", "core.php")  # patched for the profile, then put back

# --- the MariaDB twin's files (rendered here: the runbooks have no MySQL) ----------------

WP_CONFIG_MYSQL = """<?php
/*
 * WordPress configuration for {domain} on MariaDB, rendered by bench/web.py (the twin of
 * Lifeboat's templates/wordpress/wp-config.php.j2, without PG4WP). Mode 0640 root:www-data.
 */
define('DB_NAME', {db_name});
define('DB_USER', {db_user});
define('DB_PASSWORD', {db_password});
define('DB_HOST', {db_host});
define('DB_CHARSET', 'utf8');
define('DB_COLLATE', '');

{salts}

$table_prefix = {table_prefix};

define('WP_HOME', {home});
define('WP_SITEURL', {home});
define('WP_DEBUG', false);
define('DISALLOW_FILE_EDIT', true);
define('DISALLOW_FILE_MODS', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('DISABLE_WP_CRON', true);

if (!defined('ABSPATH')) {{
    define('ABSPATH', {abspath});
}}
require_once ABSPATH . 'wp-settings.php';
"""

DB_SETTINGS_MYSQL = """<?php
// The MariaDB twin's health endpoint settings (bench/web.py). Mode 0640 root:www-data.
return ['host' => {host}, 'user' => {user}, 'password' => {password}, 'name' => {name}];
"""

# The load balancer checks this path on both sites: here a write and a read in MariaDB,
# answered in the JSON shape of Lifeboat's endpoint (tasks/wordpress.parse_health).
HEALTH_MYSQL = """<?php
ini_set('display_errors', '0');
header('Content-Type: application/json');
header('Cache-Control: no-store');
$t = hrtime(true);
$r = ['ok' => false, 'host' => gethostname(), 'write' => 'not tried', 'read' => 'not tried'];
mysqli_report(MYSQLI_REPORT_OFF);
$s = require '%(settings)s';
$db = mysqli_init();
$db->options(MYSQLI_OPT_CONNECT_TIMEOUT, 2);
if (@$db->real_connect($s['host'], $s['user'], $s['password'], $s['name'])) {
    $token = bin2hex(random_bytes(8));
    $st = $db->prepare('INSERT INTO %(table)s (host, token, written_at) VALUES (?, ?, NOW()) '
        . 'ON DUPLICATE KEY UPDATE token = VALUES(token), written_at = NOW()');
    $st->bind_param('ss', $r['host'], $token);
    $r['write'] = $st->execute() ? 'ok' : $db->error;
    $st = $db->prepare('SELECT token FROM %(table)s WHERE host = ?');
    $st->bind_param('s', $r['host']);
    $st->execute();
    $row = $st->get_result()->fetch_row();
    $r['read'] = ($row && $row[0] === $token) ? 'ok' : 'mismatch';
    $r['ok'] = $r['write'] === 'ok' && $r['read'] === 'ok';
} else {
    $r['write'] = 'connect failed: ' . mysqli_connect_error();
}
$r['latency_ms'] = round((hrtime(true) - $t) / 1e6, 1);
http_response_code($r['ok'] ? 200 : 503);
echo json_encode($r), "\\n";
"""

# --- the profile's PHP ---------------------------------------------------------------------

PREPEND = """<?php
// bench/web.py's profile: per request, the wall time in PHP, WordPress's queries
// (SAVEQUERIES: count and time, rewrite included on PG4WP) and the spans PG4WP's patched
// code adds (connect, rewrite, query, wpdb_eval). One JSON line per request.
$GLOBALS['__bench'] = ['t0' => hrtime(true)];
if (!defined('SAVEQUERIES')) { define('SAVEQUERIES', true); }
function __bench_add(string $k, int $since): void {
    $GLOBALS['__bench'][$k] = ($GLOBALS['__bench'][$k] ?? 0) + (hrtime(true) - $since);
    $GLOBALS['__bench'][$k . '_n'] = ($GLOBALS['__bench'][$k . '_n'] ?? 0) + 1;
}
function __bench_t(string $k, callable $f) {
    $t = hrtime(true); $r = $f(); __bench_add($k, $t); return $r;
}
register_shutdown_function(function () {
    $b = $GLOBALS['__bench'];
    $out = ['uri' => $_SERVER['REQUEST_URI'] ?? '', 'wall' => (hrtime(true) - $b['t0']) / 1e6];
    foreach ($b as $k => $v) {
        if ($k !== 't0') { $out[$k] = str_ends_with($k, '_n') ? $v : $v / 1e6; }
    }
    global $wpdb;
    if (isset($wpdb)) {
        $out['queries'] = $wpdb->num_queries;
        $out['query_ms'] = 1000 * array_sum(array_map(fn($q) => $q[1], $wpdb->queries ?? []));
    }
    @file_put_contents('%(dir)s/requests.jsonl', json_encode($out) . "\\n", FILE_APPEND);
});
"""

# php-cli on a web droplet: the cost of one connection as each site's WordPress makes it
# per request (PG4WP: pg_connect through HAProxy; WordPress: mysqli to MariaDB).
CONNECT_PHP = """<?php
$kind = $argv[1]; $n = 50; $s = json_decode(file_get_contents('php://stdin'), true);
$t = hrtime(true);
for ($i = 0; $i < $n; $i++) {
    if ($kind === 'pg') {
        $c = pg_connect($s['dsn'], PGSQL_CONNECT_FORCE_NEW); pg_query($c, 'SELECT 1'); pg_close($c);
    } else {
        $c = mysqli_connect($s['host'], $s['user'], $s['password'], $s['name']);
        mysqli_query($c, 'SELECT 1'); mysqli_close($c);
    }
}
echo json_encode(['ms' => (hrtime(true) - $t) / 1e6 / $n]), "\\n";
"""


def php_str(value: object) -> str:
    return wp.php_str(value)


# --- the two specs -------------------------------------------------------------------------


def pg_spec() -> StackSpec:
    """examples/compact.yaml as `wbench` (the way tests/e2e/conftest.py renames a spec)."""
    data = StackSpec.from_yaml("examples/compact.yaml").model_dump()
    data.update(name=PG, vpc_cidr=PG_VPC)
    data["wordpress"]["title"] = TITLE
    return StackSpec.model_validate(data)


def twin_spec(pg: StackSpec) -> StackSpec:
    """The MariaDB twin as a StackSpec, for its names (droplets `wbmdb-db-1`,
    `wbmdb-web-1..2`, VPC, load balancer, firewalls, tag, domain) and its WordPress
    settings (the same release, theme, title, table prefix). Its droplets carry the stack
    tag only; the db group's roles are what the validator asks of a single-node stack, and
    mean nothing here (that droplet runs MariaDB)."""
    data = pg.model_dump()
    web = next(g for g in data["groups"] if "wordpress" in g["roles"])
    db = next(g for g in data["groups"] if "postgres" in g["roles"])
    data.update(
        name=MDB,
        vpc_cidr=MDB_VPC,
        single_node=True,
        groups=[
            {"name": "db", "count": 1, "size": db["size"], "roles": ["etcd", "postgres"]},
            {"name": "web", "count": web["count"], "size": web["size"], "roles": web["roles"]},
        ],
    )
    return StackSpec.model_validate(data)


# --- the PostgreSQL side -------------------------------------------------------------------


def site_answers(do: pydo.Client, spec: StackSpec) -> str | None:
    """The load balancer's address when the site answers healthy and `/` with 200."""
    try:
        lb = wp.load_balancer(do, spec)
    except wp.WordPressError:
        return None
    if not lb.get("ip"):
        return None
    healthy, _ = wp.parse_health(*wp.http_get(wp.lb_health_url(lb))[::2])
    host = {"Host": spec.wordpress.site_domain(spec.name)}
    code, _, _ = wp.http_get(f"http://{lb['ip']}/", headers=host, timeout=30)
    return lb["ip"] if healthy and code == 200 else None


def pg_up(do: pydo.Client, spec: StackSpec, reuse: bool) -> str:
    if reuse and (ip := site_answers(do, spec)):
        print(f"{spec.name}: reused (site answers at {ip})")
        return ip
    t0 = time.monotonic()
    result = up(spec, "lab")
    print(f"{spec.name}: up in {time.monotonic() - t0:.0f} s")
    return result.get("wordpress", {}).get("load_balancer") or wp.load_balancer(do, spec)["ip"]


# --- the MariaDB twin ----------------------------------------------------------------------


@dataclass
class Twin:
    spec: StackSpec
    ctx: StackContext
    db: Host
    web: list[Host]
    lb: dict
    secrets: dict[str, str] = field(default_factory=dict)


def twin_secrets(spec: StackSpec) -> dict[str, str]:
    values = {
        WORDPRESS_DB: stack_secret(spec.name, WORDPRESS_DB),
        WORDPRESS_ADMIN: stack_secret(spec.name, WORDPRESS_ADMIN),
    }
    for key, name in WORDPRESS_SALTS.items():
        values[key] = stack_secret(spec.name, name, lambda: new_password(64))
    return values


def twin_cloud(ctx: StackContext) -> tuple[list[dict], dict]:
    """Tag, SSH key, VPC, droplets (the stack tag only), load balancer and firewalls, each
    found first and made only when missing. Returns (droplets, load balancer)."""
    do, spec = ctx.do, ctx.spec
    if not any(t["name"] == spec.stack_tag for t in droplets.paged(do.tags.list, "tags")):
        droplets.call("creating the tag", do.tags.create, body={"name": spec.stack_tag})
    key_id, _ = droplets.ensure_ssh_key(do, spec, ctx.public_key)
    for vpc in droplets.paged(do.vpcs.list, "vpcs"):
        if vpc["ip_range"] == spec.vpc_cidr and vpc["name"] != spec.resource_name:
            raise SystemExit(f"VPC {vpc['name']} already uses {spec.vpc_cidr}: not mine, stop")
    vpc, _ = droplets.ensure_vpc(do, spec)
    existing = {d["name"] for d in droplets.stack_droplets(do, spec)}
    for group in spec.groups:
        missing = [n.name for n in spec.nodes() if n.group == group.name and n.name not in existing]
        if missing:
            body = {
                "names": missing,
                "region": spec.region,
                "size": group.size,
                "image": spec.image,
                "ssh_keys": [key_id],
                "vpc_uuid": vpc["id"],
                "tags": [spec.stack_tag],
                "monitoring": False,
            }
            droplets.call(f"creating {', '.join(missing)}", do.droplets.create, body=body)
    active = droplets.wait_active(do, spec, {n.name for n in spec.nodes()})
    lb, _ = droplets.ensure_load_balancer(do, spec, active, vpc["id"])
    # Lifeboat's firewalls, with MariaDB's port open inside the VPC.
    walls = droplets._firewalls(spec, active, lb["id"])  # noqa: SLF001 - the same rules
    walls[0]["inbound_rules"].append(
        {"protocol": "tcp", "ports": "3306", "sources": {"addresses": [spec.vpc_cidr]}}
    )
    have = {f["name"]: f for f in droplets.paged(do.firewalls.list, "firewalls")}
    for want in walls:
        if want["name"] in have:
            fid = have[want["name"]]["id"]
            droplets.call("updating a firewall", do.firewalls.update, firewall_id=fid, body=want)
        else:
            droplets.call("creating a firewall", do.firewalls.create, body=want)
    return active, lb


def mariadb(conn: Connection, twin: Twin) -> None:
    """Debian's MariaDB, unmasked, on the private address; the database, its user (from
    the web droplets' VPC only) and the health table."""
    wpspec = twin.spec.wordpress
    # skip-name-resolve: MariaDB otherwise looks up each client's name before the
    # handshake, which waits for a resolver the lab's droplets cannot reach (PostgreSQL
    # does no such lookup). Users are granted by address, so nothing else changes.
    cnf = f"[mysqld]\nbind-address = {twin.db.private_ip}\nskip-name-resolve\n"
    changed = put(conn, MARIADB_CNF, cnf, "0644", "root:root")
    run(conn, "systemctl unmask --quiet mariadb && systemctl enable --quiet --now mariadb")
    if changed:
        run(conn, "systemctl restart mariadb", timeout=120)
    net = twin.spec.vpc_cidr.split("/")[0].rsplit(".", 2)[0] + ".%"  # 10.41.%
    user = f"'{wpspec.db_user}'@'{net}'"
    sql = (
        f"CREATE DATABASE IF NOT EXISTS {wpspec.db_name} CHARACTER SET utf8mb4;\n"
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{twin.secrets[WORDPRESS_DB]}';\n"
        f"ALTER USER {user} IDENTIFIED BY '{twin.secrets[WORDPRESS_DB]}';\n"
        f"GRANT ALL ON {wpspec.db_name}.* TO {user};\n"
        f"CREATE TABLE IF NOT EXISTS {wpspec.db_name}.{HEALTH_TABLE} (host VARCHAR(255) "
        "PRIMARY KEY, token TEXT NOT NULL, written_at DATETIME NOT NULL);\n"
    )
    with secret_file(conn, SQL_FILE, sql):
        run(conn, f"mariadb < {SQL_FILE}", timeout=60)


def mariadb_query(conn: Connection, twin: Twin, sql: str) -> str:
    db = twin.spec.wordpress.db_name
    return run(conn, f"mariadb -N -B {db} -e {shlex.quote(sql)}", timeout=60).stdout.strip()


def twin_release(conn: Connection, spec: StackSpec) -> str:
    """The same WordPress archive as the PostgreSQL side, fetched and checked by
    fetch-release, without PG4WP. Returns the release directory."""
    pin = spec.wordpress.versions.wordpress
    rel = f"{wp.RELEASES}/wordpress-{pin.version}"
    if run(conn, f"test -e {rel}/.lifeboat-complete", warn=True).ok:
        return rel
    fetch = DESTINATIONS["wordpress/fetch-release.sh"]
    put(conn, fetch[0], render("wordpress/fetch-release.sh"), fetch[2], fetch[1])
    q = shlex.quote
    run(conn, f"rm -rf {q(rel)}", timeout=120)
    run(conn, f"{wp.FETCH} {q(pin.url)} {q(pin.sha256 or '')} {q(rel)}", timeout=900)
    theme = f"{rel}/wp-content/themes/{spec.wordpress.theme}/style.css"
    run(conn, f"test -f {rel}/wp-settings.php && test -f {theme}")
    run(
        conn,
        f"install -d -o www-data -g www-data -m 0755 {wp.UPLOADS} && "
        f"rm -rf {rel}/wp-content/uploads && ln -s {wp.UPLOADS} {rel}/wp-content/uploads && "
        f"touch {rel}/.lifeboat-complete",
        timeout=120,
    )
    return rel


def twin_files(twin: Twin, rel: str) -> list[wp.File]:
    spec, s = twin.spec, twin.secrets
    w = spec.wordpress
    domain = w.site_domain(spec.name)
    salts = "\n".join(f"define({php_str(k)}, {php_str(s[k])});" for k in WORDPRESS_SALTS)
    config = WP_CONFIG_MYSQL.format(
        domain=domain,
        db_name=php_str(w.db_name),
        db_user=php_str(w.db_user),
        db_password=php_str(s[WORDPRESS_DB]),
        db_host=php_str(twin.db.private_ip),
        salts=salts,
        table_prefix=php_str(w.table_prefix),
        home=php_str(f"http://{domain}"),
        abspath=php_str(f"{wp.DOCROOT}/"),
    )
    settings_path = DESTINATIONS["wordpress/wordpress-db.php.j2"][0]
    settings = DB_SETTINGS_MYSQL.format(
        host=php_str(twin.db.private_ip),
        user=php_str(w.db_user),
        password=php_str(s[WORDPRESS_DB]),
        name=php_str(w.db_name),
    )
    release_config = render(
        "wordpress/wp-config-release.php.j2",
        release=rel,
        docroot=wp.DOCROOT,
        config=DESTINATIONS["wordpress/wp-config.php.j2"][0],
    )

    def file(template: str, content: str, path: str | None = None) -> wp.File:
        dest, owner, mode = DESTINATIONS[template]
        return wp.File(path or dest.format(release=rel), content, mode, owner)

    return [
        file("wordpress/nginx-site.conf.j2", wp.render_site(spec, False)),
        file("wordpress/wp-config.php.j2", config),
        file("wordpress/wordpress-db.php.j2", settings),
        file(
            "wordpress/lifeboat-health.php",
            HEALTH_MYSQL % {"settings": settings_path, "table": HEALTH_TABLE},
        ),
        file("wordpress/wp-config-release.php.j2", release_config),
    ]


def twin_up(do: pydo.Client, pg: StackSpec, reuse: bool) -> Twin:
    spec = twin_spec(pg)
    ctx = StackContext.open(spec, "lab")
    t0 = time.monotonic()
    answering = reuse and site_answers(do, spec)
    active, lb = twin_cloud(ctx)
    hosts = {d["name"]: Host.from_droplet(d) for d in active}
    twin = Twin(
        spec,
        ctx,
        hosts[f"{spec.name}-db-1"],
        [hosts[n.name] for n in spec.nodes_with("wordpress")],
        lb,
        twin_secrets(spec),
    )
    if answering:
        print(f"{spec.name}: reused (site answers at {lb['ip']})")
        return twin
    with ctx.remote.connect(twin.db) as conn:
        mariadb(conn, twin)
    for host in twin.web:
        with ctx.remote.connect(host) as conn:
            rel = twin_release(conn, spec)
            wp.deploy(conn, twin_files(twin, rel), rel)
            wp.wait_local_health(conn, spec, host.name, timeout=60)
    for host in twin.web:
        wp.wait_lb_routes_to(lb, host.name, timeout=120)
    with ctx.remote.connect(twin.db) as conn:
        table = f"{spec.wordpress.table_prefix}options"
        have = mariadb_query(conn, twin, f"SHOW TABLES LIKE '{table}'")
        if (
            not have
            or mariadb_query(
                conn, twin, f"SELECT count(*) FROM {table} WHERE option_name = 'siteurl'"
            )
            == "0"
        ):
            with ctx.remote.connect(twin.web[0]) as web:
                site.install(web, spec, twin.secrets[WORDPRESS_ADMIN])
            theme = spec.wordpress.theme
            mariadb_query(
                conn,
                twin,
                f"UPDATE {table} SET option_value = '{theme}' "
                "WHERE option_name IN ('template', 'stylesheet')",
            )
    took = time.monotonic() - t0
    print(f"{spec.name}: MariaDB twin up in {took:.0f} s (load balancer {lb['ip']})")
    return twin


def destroy_twin(do: pydo.Client, spec: StackSpec) -> list[str]:
    gone = droplets.destroy_stack(do, spec)
    from prefect.blocks.system import Secret

    for name in (WORDPRESS_DB, WORDPRESS_ADMIN, *WORDPRESS_SALTS.values()):
        with contextlib.suppress(Exception):  # already gone
            Secret.delete(secret_block_name(spec.name, name))
    return gone


# --- content -------------------------------------------------------------------------------

BODY = (
    "<!-- wp:paragraph -->\n<p>Paragraph {p} of bench post {i}. Lifeboat keeps a WordPress "
    "site on highly available PostgreSQL alive through the loss of any server, and proves it "
    "every week: etcd, Patroni, synchronous replication, HAProxy routing to the current "
    "primary, WAL archiving and base backups to Spaces, restore and failover drills.</p>\n"
    "<!-- /wp:paragraph -->\n"
)


def posts(conn: Connection, spec: StackSpec, password: str, n: int) -> dict[str, str]:
    """The n bench posts (created once, then re-dated so they fill the front page in the
    same order on both sites). Returns post 1's {"id", "title", "path"}."""
    auth = (site.BLOG_ID, spec.wordpress.admin_user, password)
    have = site.xmlrpc_call(
        conn,
        spec,
        "wp.getPosts",
        *auth,
        {"post_type": "post", "post_status": "publish", "number": 200},
        ["post_id", "post_title"],
    )
    ids = {str(p["post_title"]): int(p["post_id"]) for p in have}
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(n, 0, -1):  # post 1 newest
        title = f"{POST_TITLE} {i}"
        content = {
            "post_type": "post",
            "post_status": "publish",
            "post_title": title,
            "post_content": "".join(BODY.format(p=p, i=i) for p in range(1, 6)),
            "post_date_gmt": xmlrpc.client.DateTime(
                (now - timedelta(seconds=i)).strftime("%Y%m%dT%H:%M:%S")
            ),
        }
        if title in ids:
            site.xmlrpc_call(conn, spec, "wp.editPost", *auth, ids[title], content)
        else:
            ids[title] = int(site.xmlrpc_call(conn, spec, "wp.newPost", *auth, content))
    first = f"{POST_TITLE} 1"
    return {"id": str(ids[first]), "title": first, "path": f"/?p={ids[first]}"}


def settle(conn: Connection, domain: str) -> str:
    """The same on every web droplet of both sides: the site's domain resolves to the
    droplet itself (/etc/hosts), as a real domain would resolve, so WP-Cron's loopback
    spawn does not wait 20 s for the lab's resolver, which never answers; then WP-Cron
    runs once (its due events, e.g. update checks that wait for that resolver and fail),
    so no page request of the measurement pays for them. Returns how long cron took."""
    entry = f"127.0.0.1 {domain}"
    run(
        conn,
        f"grep -qxF {shlex.quote(entry)} /etc/hosts || echo {shlex.quote(entry)} >> /etc/hosts",
    )
    t0 = time.monotonic()
    curl.get(
        conn,
        "http://127.0.0.1/wp-cron.php?doing_wp_cron",
        headers={"Host": domain},
        max_time=300,
        timeout=330,
    )
    return f"{time.monotonic() - t0:.0f} s"


# --- load ----------------------------------------------------------------------------------


@dataclass
class Cell:
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    bytes: int = 0
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000


def load(ip: str, domain: str, path: str, must: str, clients: int, seconds: float) -> Cell:
    """`clients` threads, each one keep-alive connection, GET until the deadline."""
    cell = Cell()
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker() -> None:
        conn = http.client.HTTPConnection(ip, 80, timeout=30)
        lat: list[float] = []
        ok = err = size = 0
        first = ""
        start.wait()
        while (t := time.monotonic()) < deadline[0]:
            try:
                conn.request("GET", path, headers={"Host": domain})
                resp = conn.getresponse()
                body = resp.read()
                dt = time.monotonic() - t
                if resp.status == 200 and must.encode() in body:
                    ok += 1
                    lat.append(dt)
                    size = len(body)
                else:
                    err += 1
                    first = first or f"HTTP {resp.status}"
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                err += 1
                first = first or f"{type(exc).__name__}: {exc}"
                conn.close()
        conn.close()
        with lock:
            cell.ok += ok
            cell.errors += err
            cell.latencies += lat
            cell.bytes = cell.bytes or size
            cell.first_error = cell.first_error or first

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    t0 = time.monotonic()
    deadline[0] = t0 + seconds
    start.wait()
    for th in threads:
        th.join()
    cell.seconds = time.monotonic() - t0
    return cell


@dataclass
class Side:
    name: str
    ip: str
    domain: str
    post: dict[str, str]


def median_span(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]"


def report(results: dict, sides: list[Side], pages: list[tuple[str, str]], clients: list[int]):
    pg, mdb = sides
    print(
        "\nrequests/s through each load balancer: median [min-max] over rounds; latency "
        "medians of each round's p50/p95 (ms); errors summed"
    )
    head = (
        f"{'page':<6} {'c':>3} | {'PostgreSQL rps':>21} {'MariaDB rps':>21} {'ratio':>6} | "
        f"{'p50 PG/MDB':>13} {'p95 PG/MDB':>15} | {'err PG/MDB':>10}"
    )
    print(head)
    print("-" * len(head))
    ratios = {}
    for page, _ in pages:
        for c in clients:
            cells = {s.name: results[(s.name, page, c)] for s in sides}
            rps = {k: [x.rps for x in v] for k, v in cells.items()}
            p50 = {k: statistics.median([x.pct(0.5) for x in v]) for k, v in cells.items()}
            p95 = {k: statistics.median([x.pct(0.95) for x in v]) for k, v in cells.items()}
            err = {k: sum(x.errors for x in v) for k, v in cells.items()}
            med_m = statistics.median(rps[mdb.name])
            ratio = statistics.median(rps[pg.name]) / med_m if med_m else float("nan")
            ratios[(page, c)] = ratio
            print(
                f"{page:<6} {c:>3} | {median_span(rps[pg.name]):>21} "
                f"{median_span(rps[mdb.name]):>21} {ratio:5.2f}x | "
                f"{p50[pg.name]:6.0f}/{p50[mdb.name]:<6.0f} "
                f"{p95[pg.name]:7.0f}/{p95[mdb.name]:<7.0f} "
                f"| {err[pg.name]:>4}/{err[mdb.name]:<5}"
            )
    sizes = {
        s.name: {page: results[(s.name, page, clients[0])][0].bytes for page, _ in pages}
        for s in sides
    }
    print(f"page sizes (bytes) PostgreSQL {sizes[pg.name]}, MariaDB {sizes[mdb.name]}")
    for (page, c), ratio in ratios.items():
        if c == max(clients):
            verdict = "meets" if ratio >= 0.8 else "MISSES"
            print(
                f"{page} at {c} clients: PostgreSQL does {ratio:.2f}x MariaDB's throughput: "
                f"{verdict} the goal of 0.8x"
            )
    firsts = [
        f"{k[0]} {k[1]} c={k[2]}: {x.first_error}"
        for k, v in results.items()
        for x in v
        if x.first_error
    ]
    if firsts:
        print("first errors: " + "; ".join(sorted(set(firsts))[:6]))
    return ratios


# --- profile -------------------------------------------------------------------------------


def profile_on(conn: Connection, pg4wp_dir: str | None) -> None:
    run(conn, f"install -d -o www-data -g www-data -m 0755 {PROFILE_DIR}")
    run(conn, f"rm -f {PROFILE_DIR}/requests.jsonl")
    put(conn, PROFILE_PREPEND, PREPEND % {"dir": PROFILE_DIR}, "0644", "root:root")
    put(conn, PROFILE_INI, f"auto_prepend_file = {PROFILE_PREPEND}\n", "0644", "root:root")
    if pg4wp_dir:
        d = shlex.quote(pg4wp_dir)
        sed = (
            # connect, rewrite and query timed by wrapping the calls in __bench_t
            r"-e 's/= pg_connect(\$pg_connstr)/= __bench_t(\"connect\", fn() => "
            r"pg_connect(\$pg_connstr))/' "
            r"-e 's/\$sql = pg4wp_rewrite(\$\([a-z]*\));/\$sql = __bench_t(\"rewrite\", "
            r"fn() => pg4wp_rewrite(\$\1));/' "
            r"-e 's/pg_query(\$connection, \$sql);/__bench_t(\"query\", fn() => "
            r"pg_query(\$connection, \$sql));/'"
        )
        run(
            conn,
            f"cd {d} && for f in {' '.join(PG4WP_FILES)}; do "
            f"[ -e $f.wbench-orig ] || cp -p $f $f.wbench-orig; done && "
            f"sed {sed} driver_pgsql.php.wbench-orig > driver_pgsql.php && "
            r"""sed -e 's/^eval(\(.*\));$/$__bt = hrtime(true); eval(\1); """
            r"""__bench_add("wpdb_eval", $__bt);/' """
            "core.php.wbench-orig > core.php && php -l driver_pgsql.php >/dev/null && "
            "php -l core.php >/dev/null",
        )
    run(conn, f"systemctl reload {wp.PHP_FPM}")


def profile_off(conn: Connection, pg4wp_dir: str | None) -> list[dict]:
    lines = run(conn, f"cat {PROFILE_DIR}/requests.jsonl 2>/dev/null", warn=True).stdout
    run(conn, f"rm -f {PROFILE_INI} {PROFILE_PREPEND} && rm -rf {PROFILE_DIR}")
    if pg4wp_dir:
        d = shlex.quote(pg4wp_dir)
        run(
            conn,
            f"cd {d} && for f in {' '.join(PG4WP_FILES)}; do "
            "[ ! -e $f.wbench-orig ] || mv $f.wbench-orig $f; done",
        )
    run(conn, f"systemctl reload {wp.PHP_FPM}")
    return [json.loads(x) for x in lines.splitlines() if x.strip()]


def summarize(rows: list[dict], path: str) -> dict[str, float]:
    mine = [r for r in rows if r.get("uri") == path]
    if not mine:
        return {}
    keys = sorted({k for r in mine for k in r if k != "uri"})
    return {k: statistics.mean(r.get(k, 0) for r in mine) for k in keys} | {"n": len(mine)}


def connect_cost(conn: Connection, kind: str, settings: dict) -> float:
    put(conn, "/root/.wbench-connect.php", CONNECT_PHP, "0644", "root:root")
    with secret_file(conn, "/root/.wbench-connect.json", json.dumps(settings)):
        res = run(
            conn, f"php /root/.wbench-connect.php {kind} < /root/.wbench-connect.json", timeout=120
        )
    run(conn, "rm -f /root/.wbench-connect.php")
    return json.loads(res.stdout.strip().splitlines()[-1])["ms"]


def profile(
    pg_ctx: StackContext, twin: Twin, sides: list[Side], pages: list[tuple[str, str]], secs: float
) -> None:
    pg_spec_ = pg_ctx.spec
    pg_web = pg_ctx.with_role("wordpress")
    pg4wp = f"{wp.release_dir(pg_spec_)}/wp-content/pg4wp"
    print(
        f"\nprofile: {secs:.0f} s per page at 1 client on each side, with a temporary "
        "auto_prepend_file (hrtime, SAVEQUERIES) and, on PostgreSQL, PG4WP's calls timed"
    )
    found: dict[str, dict[str, dict[str, float]]] = {}
    for side, hosts, remote, dropin in (
        (sides[0], pg_web, pg_ctx.remote, pg4wp),
        (sides[1], twin.web, twin.ctx.remote, None),
    ):
        for h in hosts:
            with remote.connect(h) as conn:
                profile_on(conn, dropin)
        rows: list[dict] = []
        try:
            for _, path in pages:
                path = path.format(post=side.post["path"])
                load(side.ip, side.domain, path, "", 1, secs)
        finally:
            for h in hosts:
                with remote.connect(h) as conn:
                    rows += profile_off(conn, dropin)
        found[side.name] = {
            page: summarize(rows, path.format(post=side.post["path"])) for page, path in pages
        }
    labels = [
        ("n", "requests profiled"),
        ("wall", "PHP wall ms/request"),
        ("queries", "queries/request"),
        ("query_ms", "ms in wpdb queries"),
        ("connect", "ms in pg_connect"),
        ("rewrite", "ms in pg4wp_rewrite"),
        ("rewrite_n", "rewrites/request"),
        ("query", "ms in pg_query"),
        ("wpdb_eval", "ms eval(class-wpdb.php)"),
    ]
    pg, mdb = sides
    for page, _ in pages:
        print(f"  {page:<6} {'':<26} {'PostgreSQL':>11} {'MariaDB':>9}")
        for key, label in labels:
            a = found[pg.name][page].get(key)
            b = found[mdb.name][page].get(key)
            if a is None and b is None:
                continue
            fa = "-" if a is None else f"{a:.2f}"
            fb = "-" if b is None else f"{b:.2f}"
            print(f"  {'':<6} {label:<26} {fa:>11} {fb:>9}")
    # Connection set-up alone, as each site's WordPress makes it once per request.
    wpspec = pg_spec_.wordpress
    pg_pass = pg_ctx.wordpress_secrets[WORDPRESS_DB]
    with pg_ctx.remote.connect(pg_web[0]) as conn:
        dsn = (
            f"host=127.0.0.1 port={pg_spec_.haproxy.primary_port} dbname={wpspec.db_name} "
            f"user={wpspec.db_user} password={pg_pass}"
        )
        pg_ms = connect_cost(conn, "pg", {"dsn": dsn})
    with twin.ctx.remote.connect(twin.web[0]) as conn:
        my = {
            "host": twin.db.private_ip,
            "user": wpspec.db_user,
            "password": twin.secrets[WORDPRESS_DB],
            "name": wpspec.db_name,
        }
        my_ms = connect_cost(conn, "mysql", my)
    print(
        f"  connection + SELECT 1 + close (php-cli on a web droplet, mean of 50): "
        f"PostgreSQL via HAProxy {pg_ms:.1f} ms, MariaDB {my_ms:.1f} ms"
    )


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="per measurement (30)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--clients", default="1,16", help="concurrent clients (1,16)")
    parser.add_argument("--posts", type=int, default=10, help="posts on each site (10)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds per side per round")
    parser.add_argument("--keep", action="store_true", help="leave both sites up")
    parser.add_argument("--reuse", action="store_true", help="keep stacks whose site answers")
    parser.add_argument("--profile", action="store_true", help="profile even when the ratio is met")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    credentials = "lab"  # the lab's blocks (`lifeboat lab blocks` saves them)
    do = droplets.api(DigitalOceanCredentials.load(credentials))
    pg = pg_spec()
    twin: Twin | None = None
    pg_ctx: StackContext | None = None
    try:
        pg_ip = pg_up(do, pg, args.reuse)
        twin = twin_up(do, pg, args.reuse)
        pg_ctx = StackContext.open(pg, credentials)
        pg_web = pg_ctx.with_role("wordpress")
        with pg_ctx.remote.connect(pg_web[0]) as conn:
            pg_post = posts(conn, pg, pg_ctx.wordpress_secrets[WORDPRESS_ADMIN], args.posts)
        with twin.ctx.remote.connect(twin.web[0]) as conn:
            mdb_post = posts(conn, twin.spec, twin.secrets[WORDPRESS_ADMIN], args.posts)
        for ctx_, hosts_, spec_ in (
            (pg_ctx, pg_web, pg),
            (twin.ctx, twin.web, twin.spec),
        ):
            for h in hosts_:
                with ctx_.remote.connect(h) as conn:
                    took = settle(conn, spec_.wordpress.site_domain(spec_.name))
                print(f"{h.name}: site domain in /etc/hosts; WP-Cron ran once ({took})")
        sides = [
            Side("PostgreSQL", pg_ip, pg.wordpress.site_domain(pg.name), pg_post),
            Side("MariaDB", twin.lb["ip"], twin.spec.wordpress.site_domain(MDB), mdb_post),
        ]
        pages = [("front", "/"), ("post", "{post}")]
        print(
            f"\nWordPress {pg.wordpress.versions.wordpress.version}, theme "
            f"{pg.wordpress.theme}, {args.posts} posts; each side 2 x s-1vcpu-1gb web "
            f"droplets behind its load balancer (PostgreSQL {pg_ip}: PG4WP "
            f"{pg.wordpress.versions.pg4wp.version}, HAProxy, 3-node Patroni, synchronous; "
            f"MariaDB {twin.lb['ip']}: one droplet, Debian's defaults + skip-name-resolve)"
        )
        print(
            f"load client: this host ({os.cpu_count()} CPUs, shared with every droplet and "
            "anything else running in the lab); keep-alive HTTP/1.1, Host header per site; "
            f"{args.rounds} rounds x {args.seconds:.0f} s per page and client count"
        )
        results: dict[tuple[str, str, int], list[Cell]] = {}
        for r in range(1, args.rounds + 1):
            for side in sides:
                load(side.ip, side.domain, "/", "", max(clients), args.warmup)
                for page, path in pages:
                    path = path.format(post=side.post["path"])
                    must = side.post["title"]
                    for c in clients:
                        cell = load(side.ip, side.domain, path, must, c, args.seconds)
                        results.setdefault((side.name, page, c), []).append(cell)
                        print(
                            f"round {r} {side.name:<10} {page:<5} c={c:<3} "
                            f"{cell.rps:7.1f} req/s p50 {cell.pct(0.5):6.0f} ms "
                            f"p95 {cell.pct(0.95):6.0f} ms errors {cell.errors}",
                            flush=True,
                        )
        ratios = report(results, sides, pages, clients)
        low = (
            ratios.get(("front", max(clients)), 1) < 0.8
            or ratios.get(("post", max(clients)), 1) < 0.8
        )
        if low or args.profile:
            profile(pg_ctx, twin, sides, pages, max(5.0, min(args.seconds, 15.0)))
    finally:
        if twin is not None:
            twin.ctx.close()
        if pg_ctx is not None:
            pg_ctx.close()
        if not args.keep:
            print(f"destroyed {MDB}: {', '.join(destroy_twin(do, twin_spec(pg))) or 'nothing'}")
            print(f"destroyed {PG}: {', '.join(droplets.destroy_stack(do, pg)) or 'nothing'}")


if __name__ == "__main__":
    main()
