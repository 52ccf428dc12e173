"""The built wheel carries what an installed Lifeboat needs: the runbooks' templates and the
lab's, found beside the installed packages, not in a repository checkout. Builds the wheel
with `uv build` (the project's build backend, hatchling, in an isolated environment)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tasks.render import DESTINATIONS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH (make deps installs it)"
    out = tmp_path_factory.mktemp("dist")
    build = [uv, "build", "--wheel", "--out-dir", str(out), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("lifeboat-*.whl")
    return built


def test_the_wheel_ships_every_template_and_no_benchmark_or_test(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    in_repo = {
        p.relative_to(ROOT).as_posix()
        for folder in ("templates", "lab/templates")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert in_repo and in_repo <= names, sorted(in_repo - names)
    assert {f"templates/{t}" for t in DESTINATIONS} <= names
    assert "tasks/packages.txt" in names
    assert "tasks/patroni-requirements.txt" in names  # the wheelhouse is built from it
    tops = {n.split("/")[0] for n in names if not n.startswith("lifeboat-")}
    assert tops == {"lifeboat", "flows", "tasks", "blocks", "lab", "templates"}


def test_the_installed_code_renders_from_the_installed_templates(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    program = (
        "import tasks.render as r, lab.render as lr\n"
        "print(r.TEMPLATES); print(lr.TEMPLATES)\n"
        "print(r.render('wal/archive.sh.j2', socket='/run/x.sock', timeout=5))\n"
        "assert lr._env.get_template('spaces.cfg.j2')\n"
        "import tasks.layout as tl\n"  # the Spaces layout, the droplets' own file
        "assert tl.SOURCE == r.TEMPLATES / 'wal' / 'spaces_layout.py', tl.SOURCE\n"
    )
    # The installed copy comes first on the path; the checkout is not the working directory.
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    templates, lab_templates, script = res.stdout.split("\n", 2)
    assert Path(templates) == site / "templates"
    assert Path(lab_templates) == site / "lab" / "templates"
    assert "/run/x.sock" in script
