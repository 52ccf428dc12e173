"""The WordPress site itself (the `release` source: WordPress with PG4WP on PostgreSQL):
installed once, and the content probe that proves it serves what was written.

- Install: WordPress's own installer (`wp-admin/install.php?step=2`), asked on a web
  droplet itself with the site's Host header; the administrator's password comes from the
  stack's Secret block and travels in a root-only file, never on a command line or over
  the public network. "Installed" is WordPress's own test: a `siteurl` row in its options
  table, read as the WordPress role through HAProxy. A rerun finds it and changes nothing.
- Probe: one post titled "Lifeboat probe <token>" written through WordPress's XML-RPC
  API (on a web droplet, as the administrator), then read back through the load balancer
  on the front page and by its own URL. The probe edits its one post each time (a new
  token, dated now, so it leads the front page) instead of adding posts to the site.
"""

from __future__ import annotations

import hashlib
import secrets
import urllib.parse
import xmlrpc.client
from datetime import UTC, datetime
from typing import Any

from fabric import Connection

from blocks.stack import StackSpec
from tasks import curl
from tasks.hosts import secret_file
from tasks.sql import literal, query, through_haproxy

INSTALL_FORM = "/root/.lifeboat-wordpress-install"
XMLRPC_BODY = "/root/.lifeboat-wordpress-xmlrpc"
WP_PGPASS = "/root/.lifeboat-wordpress-pgpass"  # placed by tasks/wordpress.prepare_database
PROBE_TITLE = "Lifeboat probe"
BLOG_ID = 1


class SiteError(RuntimeError):
    pass


def _options(spec: StackSpec) -> str:
    return f"public.{spec.wordpress.table_prefix.lower()}options"


def _as_wordpress(spec: StackSpec) -> Any:
    wp = spec.wordpress
    return through_haproxy(spec.haproxy.primary_port, wp.db_user, wp.db_name, WP_PGPASS)


def installed(conn: Connection, spec: StackSpec) -> bool:
    """WordPress's own test (is_blog_installed): its options table holds `siteurl`.
    `conn`: a droplet running HAProxy, where the WordPress role's pgpass is."""
    table = _options(spec)
    target = _as_wordpress(spec)
    if query(conn, f"SELECT to_regclass({literal(table)}) IS NOT NULL", target) != "t":
        return False
    return query(conn, f"SELECT count(*) FROM {table} WHERE option_name = 'siteurl'", target) != "0"


def active_theme(conn: Connection, spec: StackSpec) -> str:
    sql = f"SELECT option_value FROM {_options(spec)} WHERE option_name = 'stylesheet'"
    return query(conn, sql, _as_wordpress(spec))


def set_theme(conn: Connection, spec: StackSpec) -> None:
    """The spec's theme, at install only: later, the theme is the site owner's choice."""
    theme = literal(spec.wordpress.theme)
    query(
        conn,
        f"UPDATE {_options(spec)} SET option_value = {theme} "
        "WHERE option_name IN ('template', 'stylesheet')",
        _as_wordpress(spec),
    )


def site_url(spec: StackSpec) -> str:
    """The address WordPress's installer records (it guesses it from the request's Host)."""
    return f"http://{spec.wordpress.site_domain(spec.name)}"


def adopt(conn: Connection, spec: StackSpec, admin_password: str) -> str | None:
    """A site whose database came from another stack (`recover restore-cluster`) made this
    stack's: its address (`siteurl`, `home`) and the administrator's password. WordPress
    accepts an MD5 hash in `user_pass` and replaces it with its own at the next login (the
    way its documentation resets a password through the database); the probe logs in at
    once. Returns the address the site had, or None when it already had this stack's."""
    target = _as_wordpress(spec)
    url = site_url(spec)
    options = _options(spec)
    was = query(conn, f"SELECT option_value FROM {options} WHERE option_name = 'siteurl'", target)
    if was == url:
        return None
    users = f"public.{spec.wordpress.table_prefix.lower()}users"
    user = literal(spec.wordpress.admin_user)
    digest = hashlib.md5(admin_password.encode(), usedforsecurity=False).hexdigest()
    updated = query(
        conn,
        f"UPDATE {users} SET user_pass = {literal(digest)}, user_activation_key = '' "
        f"WHERE user_login = {user} RETURNING 1",
        target,
    )
    if not updated:
        logins = query(conn, f"SELECT string_agg(user_login, ', ') FROM {users}", target)
        raise SiteError(
            f"the site restored from {was} has no user {spec.wordpress.admin_user!r} (it has: "
            f"{logins}): set wordpress.admin_user in the spec to its administrator"
        )
    query(
        conn,
        f"UPDATE {options} SET option_value = {literal(url)} "
        "WHERE option_name IN ('siteurl', 'home')",
        target,
    )
    return was


def _host_header(spec: StackSpec) -> dict[str, str]:
    return {"Host": spec.wordpress.site_domain(spec.name)}


def install(conn: Connection, spec: StackSpec, admin_password: str) -> str:
    """Run WordPress's installer on the web droplet `conn`; what it answered."""
    wp = spec.wordpress
    form = urllib.parse.urlencode(
        {
            "weblog_title": wp.site_title(spec.name),
            "user_name": wp.admin_user,
            "admin_password": admin_password,
            "admin_password2": admin_password,
            "pw_weak": "1",  # ours is 32 random characters; WordPress's meter needs no say
            "admin_email": wp.site_admin_email(spec.name),
            "blog_public": "1",
            "language": "",
        }
    )
    with secret_file(conn, INSTALL_FORM, form):
        # The installer's many small queries through HAProxy take ~20 s here.
        answer = curl.post(
            conn,
            "http://127.0.0.1/wp-admin/install.php?step=2",
            INSTALL_FORM,
            headers=_host_header(spec),
            max_time=240,
            timeout=300,
        )
    if answer.status != 200 or "Success!" not in answer.body:
        raise SiteError(
            f"WordPress's installer on {conn.host} answered HTTP {answer.status}: "
            f"{_text(answer.body)[:300]!r}"
        )
    return "installed"


def _text(html: str) -> str:
    """An HTML answer, squeezed into one line for an error message."""
    return " ".join(html.replace("<", " <").split())


def xmlrpc_call(conn: Connection, spec: StackSpec, method: str, *params: Any) -> Any:
    """One XML-RPC call to WordPress on the web droplet `conn`; the request (it carries the
    administrator's password) in a root-only file."""
    body = xmlrpc.client.dumps(params, method, allow_none=True)
    with secret_file(conn, XMLRPC_BODY, body):
        answer = curl.post(
            conn,
            "http://127.0.0.1/xmlrpc.php",
            XMLRPC_BODY,
            headers=_host_header(spec) | {"Content-Type": "text/xml"},
        )
    if answer.status != 200:
        raise SiteError(
            f"XML-RPC {method} on {conn.host}: HTTP {answer.status} {_text(answer.body)[:300]!r}"
        )
    try:
        (result,), _ = xmlrpc.client.loads(answer.body)
    except xmlrpc.client.Fault as fault:
        raise SiteError(f"XML-RPC {method} on {conn.host}: {fault.faultString}") from None
    except Exception as exc:  # an answer that is not XML-RPC (a PHP error page, say)
        raise SiteError(
            f"XML-RPC {method} on {conn.host}: not an XML-RPC answer ({exc}): "
            f"{_text(answer.body)[:300]!r}"
        ) from None
    return result


def write_probe(conn: Connection, spec: StackSpec, admin_password: str) -> dict[str, str]:
    """The probe post, written (created once, then edited) through WordPress on `conn`.
    Returns {"id", "title", "token", "link"}."""
    user = spec.wordpress.admin_user
    token = secrets.token_hex(8)
    now = datetime.now(UTC)
    title = f"{PROBE_TITLE} {token}"
    content = {
        "post_type": "post",
        "post_status": "publish",
        "post_title": title,
        "post_content": f"<p>Written by Lifeboat's content probe at {now:%Y-%m-%d %H:%M:%S} "
        f"UTC; token {token}.</p>",
        "post_date_gmt": xmlrpc.client.DateTime(now.strftime("%Y%m%dT%H:%M:%S")),
    }
    auth = (BLOG_ID, user, admin_password)
    posts = xmlrpc_call(
        conn,
        spec,
        "wp.getPosts",
        *auth,
        {"post_type": "post", "post_status": "publish", "number": 100},
        ["post_id", "post_title"],
    )
    mine = [p for p in posts if str(p.get("post_title", "")).startswith(PROBE_TITLE)]
    if mine:
        post_id = str(mine[0]["post_id"])
        xmlrpc_call(conn, spec, "wp.editPost", *auth, int(post_id), content)
    else:
        post_id = str(xmlrpc_call(conn, spec, "wp.newPost", *auth, content))
    post = xmlrpc_call(conn, spec, "wp.getPost", *auth, int(post_id), ["link", "post_title"])
    if post.get("post_title") != title:
        got = post.get("post_title")
        raise SiteError(f"probe post {post_id} reads back {got!r}, not {title!r}")
    return {"id": post_id, "title": title, "token": token, "link": str(post["link"])}


def path_of(link: str) -> str:
    """The path and query of a post's link (its host is the site's domain, which the
    orchestrator may not resolve: it asks the load balancer's address with a Host header)."""
    parts = urllib.parse.urlsplit(link)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def upload_media(
    conn: Connection, spec: StackSpec, admin_password: str, name: str, data: bytes, mime: str
) -> dict[str, str]:
    """A file uploaded into WordPress's media library through XML-RPC on the web droplet
    `conn` (WordPress stores it under wp-content/uploads; the media agent takes it to
    Spaces). Returns WordPress's answer: {"id", "file", "url", "type"}."""
    answer = xmlrpc_call(
        conn,
        spec,
        "wp.uploadFile",
        BLOG_ID,
        spec.wordpress.admin_user,
        admin_password,
        {"name": name, "type": mime, "bits": xmlrpc.client.Binary(data), "overwrite": False},
    )
    return {k: str(answer[k]) for k in ("id", "file", "url", "type")}
