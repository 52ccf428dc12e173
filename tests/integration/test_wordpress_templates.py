"""The web tier's files, rendered and checked by the real tools: `nginx -t` and a real
nginx serving the rendered site (routing, denials, cache headers), `php -l` and php
running the rendered PHP, fetch-release against local archives. The logic without the
tools (site files, health parsing, spec validation): tests/unit/test_wordpress_templates.py.

Needs on the host: nginx, php-cli, php-pgsql (the Makefile's deps install them)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from lifeboat.waiting import wait_until
from tasks import wordpress as wp
from tasks.hosts import Host
from tasks.render import TEMPLATES, render
from tests.integration.test_templates import EXAMPLES, tool
from tests.unit.test_wordpress_templates import SALTS

# Characters a PHP single-quoted literal must escape.
NASTY = "pa'ss\\word$x\"y"


@pytest.fixture(scope="module")
def spec() -> StackSpec:
    return StackSpec.from_yaml(EXAMPLES / "compact.yaml")


@pytest.fixture(scope="module")
def article() -> StackSpec:
    return StackSpec.from_yaml(EXAMPLES / "article.yaml")


def php(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("php", "php-cli"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
    )


# --- nginx ---------------------------------------------------------------------------------


def nginx_conf(prefix: Path, site: str, port: int | None = None) -> Path:
    """A minimal nginx.conf around the rendered site, everything under `prefix`."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/nginx/fastcgi_params", prefix / "fastcgi_params")
    if port is not None:
        site = site.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
        site = site.replace("listen [::]:80 default_server;", "")
    (prefix / "site.conf").write_text(site)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{}}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {prefix}/body;
    fastcgi_temp_path {prefix}/fastcgi;
    proxy_temp_path {prefix}/proxy;
    scgi_temp_path {prefix}/scgi;
    uwsgi_temp_path {prefix}/uwsgi;
    include {prefix}/site.conf;
}}
"""
    )
    return conf


@pytest.mark.parametrize("debian", [True, False], ids=["debian-package", "download"])
def test_nginx_site_passes_nginx_t(spec: StackSpec, tmp_path: Path, debian: bool) -> None:
    site = wp.render_site(spec, debian)
    assert "server_name compact.lifeboat.test;" in site
    assert ("WORDPRESS_CONFIG lifeboat" in site) is debian
    conf = nginx_conf(tmp_path, site)
    res = subprocess.run(
        [tool("nginx", "nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_site(spec: StackSpec, tmp_path: Path) -> Iterator[str]:
    """The rendered site run by a real nginx on a loopback port, over a fake docroot (no
    php-fpm: PHP requests reach fastcgi_pass and fail with 502)."""
    docroot = tmp_path / "docroot"
    (docroot / "wp-includes/css").mkdir(parents=True)
    (docroot / "wp-includes/css/dashicons.min.css").write_text("a{}")
    (docroot / "wp-config.php").write_text("<?php // secret")
    (docroot / ".htaccess").write_text("secret")
    (docroot / "index.php").write_text("<?php")
    port = free_port()
    site = wp.render_site(spec, True).replace(f"root {wp.DOCROOT};", f"root {docroot};")
    conf = nginx_conf(tmp_path / "nginx", site, port)
    proc = subprocess.Popen(
        [tool("nginx", "nginx"), "-p", str(tmp_path / "nginx"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True

        wait_until("nginx to listen", listening, timeout=30, every=0.1, retry_on=(OSError,))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def test_site_denies_secrets_caches_assets_and_sends_php_to_fpm(served_site: str) -> None:
    assert get(served_site + "/wp-config.php")[0] == 403
    assert get(served_site + "/.htaccess")[0] == 403
    assert get(served_site + "/wp-content/uploads/2026/evil.php")[0] == 403
    code, headers = get(served_site + "/wp-includes/css/dashicons.min.css")
    assert code == 200 and headers["cache-control"] == "max-age=31536000"
    # PHP, the health endpoint and pretty permalinks (try_files -> index.php) all go to
    # php-fpm, which is absent here: 502 proves where they went, and that nothing was
    # served as a file.
    for path in ("/index.php", "/lifeboat-health.php", "/2026/11/hello-world/"):
        assert get(served_site + path)[0] == 502, path


# --- PHP -----------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("abspath", [None, wp.DOCROOT], ids=["debian-package", "download"])
def test_wp_config_lints_and_refuses_without_pg4wp(
    spec: StackSpec, tmp_path: Path, abspath: str | None
) -> None:
    text = wp.render_wp_config(spec, "127.0.0.1:5000", NASTY, SALTS, abspath)
    path = write(tmp_path, "wp-config.php", text)
    lint = php("-l", str(path))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert ("require_once ABSPATH . 'wp-settings.php'" in text) is (abspath is not None)
    # No PG4WP drop-in on this machine: the config stops before WordPress would speak
    # MySQL to PostgreSQL.
    ran = php("-d", "display_errors=stderr", str(path))
    assert "PG4WP" in ran.stdout and ran.returncode == 0, ran.stdout + ran.stderr


def test_wp_config_values_round_trip(spec: StackSpec, tmp_path: Path) -> None:
    """Every secret lands in PHP exactly, whatever its characters."""
    text = wp.render_wp_config(spec, "10.10.0.5:5000", NASTY, SALTS, None)
    body = text.split("// WordPress speaks MySQL")[0]  # the defines, without the guard
    path = write(tmp_path, "defs.php", body)
    code = (
        f"include '{path}'; echo json_encode([DB_NAME, DB_USER, DB_PASSWORD, DB_HOST, "
        "AUTH_KEY, NONCE_SALT, $table_prefix]);"
    )
    out = php("-r", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        f'["wordpress","wordpress",{_json(NASTY)},"10.10.0.5:5000",'
        '"salt-AUTH_KEY","salt-NONCE_SALT","wp_"]'
    )


def _json(value: str) -> str:
    import json

    return json.dumps(value)


def test_db_settings_round_trip(spec: StackSpec, tmp_path: Path) -> None:
    path = write(tmp_path, "db.php", wp.render_db_settings(spec, "127.0.0.1", 5000, NASTY))
    assert php("-l", str(path)).returncode == 0
    out = php("-r", f"echo json_encode(require '{path}');")
    assert out.stdout == (
        '{"host":"127.0.0.1","port":5000,"dbname":"wordpress","user":"wordpress",'
        f'"password":{_json(NASTY)}}}'
    )


def test_health_endpoint_lints_and_reports_a_failed_connect_fast(tmp_path: Path) -> None:
    script = write(tmp_path, "health.php", render("wordpress/lifeboat-health.php"))
    assert php("-l", str(script)).returncode == 0
    # Without its settings file it answers JSON with ok false, quickly.
    t0 = time.monotonic()
    out = php(str(script))
    assert time.monotonic() - t0 < 5
    assert '"ok":false' in out.stdout and '"write":"not tried"' in out.stdout, out.stdout
    healthy, _ = wp.parse_health(503, out.stdout)
    assert not healthy


def test_health_endpoint_tells_the_public_nothing_of_the_database(
    spec: StackSpec, tmp_path: Path
) -> None:
    """A failed connect: the driver's words for the load balancer's checks (no
    X-Forwarded-For), a generic line for a public request (the load balancer sets it)."""
    db = wp.render_db_settings(spec, "127.0.0.1", free_port(), NASTY)
    settings = write(tmp_path, "db.php", db)
    text = render("wordpress/lifeboat-health.php").replace(
        "'/etc/lifeboat/wordpress-db.php'", f"'{settings}'"
    )
    script = write(tmp_path, "health.php", text)
    private = php("-d", "log_errors=0", str(script))
    assert "connect: " in private.stdout and "database unavailable" not in private.stdout
    public = php("-d", "log_errors=0", str(script), env={"HTTP_X_FORWARDED_FOR": "203.0.113.9"})
    assert '"error":"connect: database unavailable"' in public.stdout, public.stdout
    assert NASTY not in private.stdout + public.stdout


def test_public_health_requests_are_rate_limited_and_the_load_balancers_never(
    served_site: str,
) -> None:
    """Through the real nginx (php-fpm absent: 502 means "let through"): a burst of 50 per
    client, then 20 a second; the load balancer's checks (no X-Forwarded-For) never."""
    url = served_site + "/lifeboat-health.php"

    def codes(headers: dict[str, str], n: int) -> list[int]:
        out = []
        for _ in range(n):
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    out.append(resp.status)
            except urllib.error.HTTPError as exc:
                out.append(exc.code)
        return out

    assert set(codes({}, 120)) == {502}  # the load balancer's checks: never limited
    flood = codes({"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}, 120)
    assert flood[:50] == [502] * 50 and flood.count(429) > 20, flood
    # Another client is limited on its own (per client, its burst is still there).
    assert codes({"X-Forwarded-For": "203.0.113.10"}, n=5) == [502] * 5


# --- fetch-release -------------------------------------------------------------------------


def archive(tmp_path: Path, tops: list[str]) -> tuple[Path, str]:
    src = tmp_path / "src"
    for top in tops:
        (src / top).mkdir(parents=True)
        (src / top / "index.php").write_text("<?php")
    path = tmp_path / "release.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for top in tops:
            tar.add(src / top, arcname=top)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(url: str, sha: str, dest: Path) -> subprocess.CompletedProcess:
    script = TEMPLATES / "wordpress/fetch-release.sh"
    return subprocess.run(
        ["sh", str(script), url, sha, str(dest)], capture_output=True, text=True, timeout=60
    )


def test_fetch_release_unpacks_only_a_verified_archive(tmp_path: Path) -> None:
    path, sha = archive(tmp_path, ["wordpress"])
    dest = tmp_path / "out/wordpress-1"
    bad = fetch(f"file://{path}", "0" * 64, dest)
    assert bad.returncode == 4 and "checksum mismatch" in bad.stderr
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing unpacked
    good = fetch(f"file://{path}", sha, dest)
    assert good.returncode == 0, good.stderr
    assert (dest / "index.php").read_text() == "<?php"
    assert fetch(f"file://{path}", sha, dest).returncode == 2  # never over a release


def test_fetch_release_refuses_odd_layouts_and_missing_files(tmp_path: Path) -> None:
    path, sha = archive(tmp_path, ["a", "b"])
    assert fetch(f"file://{path}", sha, tmp_path / "x").returncode == 5
    assert fetch(f"file://{tmp_path}/missing.tar.gz", sha, tmp_path / "y").returncode == 3


def test_fetch_release_refuses_a_file_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "release.tar.gz"
    path.write_text("<html>not found</html>\n")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    out = fetch(f"file://{path}", sha, tmp_path / "z")
    assert out.returncode == 5 and "is not a .tar.gz archive" in out.stderr, out.stderr
    assert not (tmp_path / "z").exists()


def test_release_dropin_and_config_lint(spec: StackSpec, tmp_path: Path) -> None:
    """Lifeboat's db.php defines the compatibility function and then loads PG4WP from
    beside it; a release's wp-config.php loads the shared one."""
    release = spec.model_copy(
        update={"wordpress": spec.wordpress.model_copy(update={"source": "release"})}
    )
    web = Host("w", 1, "198.18.0.9", "10.20.0.9", ("haproxy", "wordpress"))
    spaces = {"endpoint": "https://s", "region": "r", "access_key": "a", "secret_key": "k"}
    files = {f.path: f for f in wp.site_files(release, web, [], NASTY, SALTS, spaces)}
    rel = wp.release_dir(release)
    dropin = files[f"{rel}/wp-content/db.php"]
    config = files[f"{rel}/wp-config.php"]
    for f in (dropin, config):
        path = write(tmp_path, Path(f.path).name, f.content)
        lint = php("-l", str(path))
        assert lint.returncode == 0, lint.stdout + lint.stderr
    assert f'require "{wp.DESTINATIONS["wordpress/wp-config.php.j2"][0]}";' in config.content
    # Run it with a stand-in PG4WP loader beside it: the function exists before it loads.
    (tmp_path / "pg4wp").mkdir()
    (tmp_path / "pg4wp/db.php").write_text(
        "<?php echo function_exists('wpsqli_connect') ? 'defined' : 'missing';"
    )
    out = php(str(tmp_path / "db.php"))
    assert out.stdout == "defined", out.stdout + out.stderr
