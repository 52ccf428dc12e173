"""The web tier's logic without the real tools: which HAProxy the site's files point at,
the health answer's parsing, and spec validation of the wordpress section. The rendered
files checked by nginx and php: tests/integration/test_wordpress_templates.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks.stack import StackSpec, WordPressSpec
from tasks import wordpress as wp
from tasks.hosts import Host
from tests.unit.test_templates import EXAMPLES

SALTS = {k: f"salt-{k}" for k in ("AUTH_KEY", "NONCE_SALT")}


@pytest.fixture(scope="module")
def spec() -> StackSpec:
    return StackSpec.from_yaml(EXAMPLES / "compact.yaml")


@pytest.fixture(scope="module")
def article() -> StackSpec:
    return StackSpec.from_yaml(EXAMPLES / "article.yaml")


def test_parse_health() -> None:
    good = '{"ok": true, "write": "ok", "read": "ok", "host": "w1", "latency_ms": 3}'
    assert wp.parse_health(200, good)[0]
    assert not wp.parse_health(503, good)[0]
    assert not wp.parse_health(200, good.replace('"read": "ok"', '"read": "failed"'))[0]
    healthy, said = wp.parse_health(502, "<html>Bad Gateway</html>")
    assert not healthy and "502" in said


def test_site_files_point_at_haproxy(spec: StackSpec, article: StackSpec) -> None:
    """compact: HAProxy on the web droplet itself; article: the HAProxy droplet."""
    web = Host("w", 1, "198.18.0.9", "10.20.0.9", ("haproxy", "wordpress"))
    assert wp.db_address(spec, web, [web]) == ("127.0.0.1", 5000)
    lone = Host("w", 1, "198.18.0.9", "10.10.0.9", ("wordpress",))
    ha = Host("h", 2, "198.18.0.8", "10.10.0.8", ("haproxy",))
    assert wp.db_address(article, lone, [ha]) == ("10.10.0.8", 5000)
    assert article.wordpress.source == "release"
    spaces = {"endpoint": "https://s", "region": "r", "access_key": "a", "secret_key": "k"}
    files = {f.path: f for f in wp.site_files(article, lone, [ha], "pw", SALTS, spaces)}
    config = files["/var/www/lifeboat/wp-config.php"]
    assert (config.mode, config.owner) == ("0640", "root:www-data")
    assert "define('DB_HOST', '10.10.0.8:5000');" in config.content
    assert wp.FETCH in files and files["/etc/lifeboat/media.conf"].mode == "0600"
    with pytest.raises(wp.WordPressError, match="Spaces settings"):
        wp.site_files(article, lone, [ha], "pw", SALTS)
    debian = article.model_copy(
        update={"wordpress": article.wordpress.model_copy(update={"source": "debian-package"})}
    )
    files = {f.path: f for f in wp.site_files(debian, lone, [ha], "pw", SALTS)}
    assert wp.DEBIAN_WP_CONFIG in files and "/etc/lifeboat/media.conf" not in files


def test_wordpress_spec_defaults(spec: StackSpec) -> None:
    bare = spec.model_copy(update={"wordpress": WordPressSpec()})
    w = bare.wordpress
    assert w.site_domain(spec.name) == "compact.lifeboat.test"
    assert w.site_title(spec.name) == "compact"
    assert w.site_admin_email(spec.name) == "lifeboat@compact.lifeboat.test"
    assert w.theme == "twentytwentythree" and w.source == "release"
    assert w.versions.wordpress.version == "6.4.3" and w.versions.pg4wp.version == "3.4.1"
    assert wp.release_dir(bare) == "/var/www/lifeboat/releases/wordpress-6.4.3-pg4wp-3.4.1"
    with pytest.raises(wp.WordPressError, match="sha256 not set"):
        wp.check_pins(bare)
    wp.check_pins(spec)  # the examples pin the lab's archives


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"domain": "https://blog.example.com"}, "lowercase DNS name"),
        ({"db_user": "postgres"}, "not 'postgres'"),
        ({"db_name": "Word-Press"}, "lowercase letters, digits and '_'"),
        (
            {"versions": {"wordpress": {"version": "6.4.3", "url": "http://x.org/w.tar.gz"}}},
            "https:// URL",
        ),
        (
            {
                "versions": {
                    "pg4wp": {"version": "3.4.1", "url": "https://x.org/p.tar.gz", "sha256": "ab"}
                }
            },
            "not a SHA-256",
        ),
        ({"domian": "x.example.com"}, "Extra inputs are not permitted"),
        ({"admin_user": "Admin!"}, "admin_user"),
        ({"admin_email": "nobody"}, "admin_email"),
        ({"theme": "../twentytwentythree"}, "theme"),
    ],
)
def test_wordpress_spec_rejects(section: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WordPressSpec.model_validate(section)
