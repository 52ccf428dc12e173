"""The lab's WordPress release archive (lab/releases.py), built from a stand-in image:
wordpress.org's layout, Debian's symlinks followed inside the image (never on this host),
Debian's glue left out, the CA bundle from Mozilla's list alone, and the same bytes on
every build."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from lab import releases


def fake_image(root: Path, version: str = "6.1.9") -> Path:
    wp = root / releases.WORDPRESS_SRC
    (wp / "wp-includes/js").mkdir(parents=True)
    (wp / "wp-includes/certificates").mkdir(parents=True)
    (wp / "wp-content/themes/twentytwentythree").mkdir(parents=True)
    (wp / "wp-includes/version.php").write_text(f"<?php\n$wp_version = '{version}';\n")
    (wp / "index.php").write_text("<?php // index")
    (wp / "wp-config.php").write_text("<?php // Debian's loader")
    (wp / "wp-content/themes/twentytwentythree/style.css").write_text("/* theme */")
    # Debian's links into other packages: one absolute (inside the image), one relative.
    (root / "usr/share/javascript/underscore").mkdir(parents=True)
    (root / "usr/share/javascript/underscore/underscore.js").write_text("// underscore")
    os.symlink("/usr/share/javascript/underscore/underscore.js", wp / "wp-includes/js/u.js")
    os.symlink("../../index.php", wp / "wp-includes/js/rel.php")
    os.symlink("/etc/wordpress/htaccess", wp / ".htaccess")
    os.symlink("/etc/ssl/certs/ca-certificates.crt", wp / "wp-includes/certificates/ca-bundle.crt")
    (root / releases.MOZILLA_CAS).mkdir(parents=True)
    (root / releases.MOZILLA_CAS / "b.crt").write_text("B\n")
    (root / releases.MOZILLA_CAS / "a.crt").write_text("A\n")
    (root / "etc/ssl/certs").mkdir(parents=True)
    (root / "etc/ssl/certs/ca-certificates.crt").write_text("A\nB\nLAB CA\n")
    return root


def members(archive: Path) -> dict[str, bytes | None]:
    with tarfile.open(archive) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def test_archive_layout_links_followed_inside_the_image_glue_left_out(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "rootfs")
    out = tmp_path / "out"
    out.mkdir()
    archive = releases.build_wordpress(root, out)
    assert archive.name == "wordpress-6.1.9.tar.gz"
    got = members(archive)
    assert got["wordpress/wp-includes/js/u.js"] == b"// underscore"
    assert got["wordpress/wp-includes/js/rel.php"] == b"<?php // index"
    assert got["wordpress/wp-includes/certificates/ca-bundle.crt"] == b"A\nB\n"  # no lab CA
    assert "wordpress/wp-config.php" not in got and "wordpress/.htaccess" not in got
    assert got["wordpress/wp-content/themes/twentytwentythree/style.css"] == b"/* theme */"
    assert all(name == "wordpress" or name.startswith("wordpress/") for name in got)


def test_the_same_image_gives_the_same_bytes(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "rootfs")
    shas = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        out.mkdir()
        # Another build time for the image's folders: the archive must not notice.
        os.utime(root / releases.WORDPRESS_SRC, (1e9 + i, 1e9 + i))
        shas.append(hashlib.sha256(releases.build_wordpress(root, out).read_bytes()).hexdigest())
    assert shas[0] == shas[1]


def test_a_missing_theme_is_named(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "rootfs")
    (root / releases.WORDPRESS_SRC / "wp-content/themes/twentytwentythree/style.css").unlink()
    with pytest.raises(RuntimeError, match="wordpress-theme-twentytwentythree"):
        releases.build_wordpress(root, tmp_path)


def test_the_vendored_pg4wp_is_the_one_the_examples_pin() -> None:
    from blocks.stack import StackSpec

    sha = releases.sha256(releases.PG4WP_ARCHIVE)
    for name in ("article", "compact"):
        spec = StackSpec.from_yaml(f"examples/{name}.yaml")
        assert spec.wordpress.versions.pg4wp.sha256 == sha, name
