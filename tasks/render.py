"""Render the files Lifeboat places on hosts from templates/ (jinja2).

StrictUndefined: a missing context variable is an error, never an empty string in a
config file. Values that may contain arbitrary characters go through `| quote`, which
emits a JSON string (valid YAML, and a safe double-quoted string for env files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

# Beside this package, in a checkout and in an installed wheel alike (pyproject ships templates/).
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

# Where each template's output goes on a droplet: (path, owner:group, mode).
DESTINATIONS: dict[str, tuple[str, str, str]] = {
    "etcd/etcd.env.j2": ("/etc/default/etcd", "root:root", "0644"),
    "patroni/patroni.yml.j2": ("/etc/patroni/patroni.yml", "postgres:postgres", "0600"),
    "patroni/patroni.service.j2": ("/etc/systemd/system/patroni.service", "root:root", "0644"),
    "haproxy/haproxy.cfg.j2": ("/etc/haproxy/haproxy.cfg", "root:haproxy", "0640"),
    "wal/wal_agent.py": ("/usr/local/lib/lifeboat/wal_agent.py", "root:root", "0644"),
    "wal/basebackup.py": ("/usr/local/lib/lifeboat/basebackup.py", "root:root", "0644"),
    "wal/spaces_layout.py": ("/usr/local/lib/lifeboat/spaces_layout.py", "root:root", "0644"),
    "wal/spaces_client.py": ("/usr/local/lib/lifeboat/spaces_client.py", "root:root", "0644"),
    "wal/archive.sh.j2": ("/usr/local/lib/lifeboat/wal-archive", "root:root", "0755"),
    "wal/restore.sh.j2": ("/usr/local/lib/lifeboat/wal-restore", "root:root", "0755"),
    "wal/wal.conf.j2": ("/etc/lifeboat/wal.conf", "postgres:postgres", "0600"),
    "wordpress/nginx-site.conf.j2": ("/etc/nginx/sites-available/lifeboat", "root:root", "0644"),
    # Beside the release directory (WordPress looks one level above ABSPATH), outside the
    # document root; with Debian's package (the lab) /etc/wordpress/config-lifeboat.php.
    "wordpress/wp-config.php.j2": ("/var/www/lifeboat/wp-config.php", "root:www-data", "0640"),
    "wordpress/wordpress-db.php.j2": ("/etc/lifeboat/wordpress-db.php", "root:www-data", "0640"),
    "wordpress/lifeboat-health.php": (
        "/usr/local/lib/lifeboat/lifeboat-health.php",
        "root:root",
        "0644",
    ),
    "wordpress/fetch-release.sh": ("/usr/local/lib/lifeboat/fetch-release", "root:root", "0755"),
    # Inside each release directory ({release} is filled in by tasks/wordpress.py).
    "wordpress/db.php": ("{release}/wp-content/db.php", "root:root", "0644"),
    "wordpress/wp-config-release.php.j2": ("{release}/wp-config.php", "root:root", "0644"),
    # The media agent imports wal/spaces_client.py and wal/spaces_layout.py: placed beside it.
    "wordpress/media_agent.py": ("/usr/local/lib/lifeboat/media_agent.py", "root:root", "0644"),
    "wordpress/media.conf.j2": ("/etc/lifeboat/media.conf", "root:root", "0600"),
    "wordpress/lifeboat-media.service.j2": (
        "/etc/systemd/system/lifeboat-media.service",
        "root:root",
        "0644",
    ),
    "wordpress/php-lifeboat.ini": ("/etc/php/8.2/fpm/conf.d/90-lifeboat.ini", "root:root", "0644"),
    "wordpress/lifeboat-wp-cron.service.j2": (
        "/etc/systemd/system/lifeboat-wp-cron.service",
        "root:root",
        "0644",
    ),
    "wordpress/lifeboat-wp-cron.timer.j2": (
        "/etc/systemd/system/lifeboat-wp-cron.timer",
        "root:root",
        "0644",
    ),
    "events/cluster_events.py": ("/usr/local/lib/lifeboat/cluster_events.py", "root:root", "0755"),
    "events/events.conf.j2": ("/etc/lifeboat/events.conf", "root:postgres", "0640"),
    "events/lifeboat-events.service.j2": (
        "/etc/systemd/system/lifeboat-events.service",
        "root:root",
        "0644",
    ),
    "events/lifeboat-events.path.j2": (
        "/etc/systemd/system/lifeboat-events.path",
        "root:root",
        "0644",
    ),
    "events/lifeboat-events.timer.j2": (
        "/etc/systemd/system/lifeboat-events.timer",
        "root:root",
        "0644",
    ),
    "wal/lifeboat-wal-agent.service.j2": (
        "/etc/systemd/system/lifeboat-wal-agent.service",
        "root:root",
        "0644",
    ),
}


def _quote(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined: raises UndefinedError naming the missing variable
    return json.dumps(value, ensure_ascii=False)


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
_env.filters["quote"] = _quote


def render(name: str, /, **context: Any) -> str:
    """Render template `name` (relative to templates/, e.g. "patroni/patroni.yml.j2").
    `name` is positional-only so templates can take a `name` variable too."""
    return _env.get_template(name).render(**context)
