"""The installed distribution: built as a wheel, it puts one name, ``fesf_fed``, into site-packages.

The apps' folders, ``server/`` and ``clients/``, install as ``fesf_fed.server`` and
``fesf_fed.clients`` (pyproject.toml's ``package-dir``), so no generic top-level
``server`` or ``clients`` package can collide with another distribution's. In a
checkout and in the Flower app bundle that ``flwr run .`` makes of it, the same
folders are the top-level packages that ``[tool.flwr.app.components]`` names.
"""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What a checkout holds that is no part of the source a wheel is built from.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "*.egg-info", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A wheel built from a copy of the checkout, installed (without dependencies) into a folder of its own.

    Returns the source copy and the install folder.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    dist, site = tmp / "dist", tmp / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True)
    (wheel,) = dist.glob("fesf_fed-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return source, site


def _python(code: str, cwd: Path, path: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_wheel_installs_one_top_level_package(installed: tuple[Path, Path]) -> None:
    _, site = installed
    names = {entry.name for entry in site.iterdir() if not entry.name.endswith(".dist-info")} - {"bin"}
    assert names == {"fesf_fed"}
    # Every package of the checkout is in the wheel (pyproject.toml lists them by hand).
    source, _ = installed
    expected = {init.parent.relative_to(source / "fesf_fed") for init in (source / "fesf_fed").rglob("__init__.py")}
    for folder in ("server", "clients"):
        expected |= {
            Path(folder) / init.parent.relative_to(source / folder) for init in (source / folder).rglob("__init__.py")
        }
    wheel = {init.parent.relative_to(site / "fesf_fed") for init in (site / "fesf_fed").rglob("__init__.py")}
    assert wheel == expected
    assert list((site / "fesf_fed" / "server" / "dashboard" / "assets").glob("*.css"))
    assert list((site / "fesf_fed" / "data" / "demo").glob("*.json"))


def test_every_command_runs_from_the_installed_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, site = installed
    (dist_info,) = site.glob("fesf_fed-*.dist-info")
    entry_points = configparser.ConfigParser()
    entry_points.read(dist_info / "entry_points.txt")
    commands = dict(entry_points["console_scripts"])
    assert set(commands) == {"fesf", "fesf-client", "fesf-server", "fesf-dashboard", "fesf-reproduce"}
    # Each command's --help, from a folder that is not the checkout: only the installed copy can answer.
    for name, target in commands.items():
        module, function = target.split(":")
        code = f"import sys, {module} as m; sys.argv = [{name!r}, '--help']; m.{function}()"
        result = _python(code, cwd=tmp_path, path=[site])
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "usage:" in result.stdout
    located = _python("import fesf_fed.server.cli as m; print(m.__file__)", cwd=tmp_path, path=[site])
    assert Path(located.stdout.strip()).is_relative_to(site)


def test_the_flower_app_bundle_still_finds_its_components(installed: tuple[Path, Path]) -> None:
    # `flwr run .` ships the checkout's folders and imports the components from there, the wheel installed.
    source, site = installed
    result = _python("import server.app, clients.app; print(server.app.app, clients.app.app)", cwd=source, path=[site])
    assert result.returncode == 0, result.stderr
    assert "ServerApp" in result.stdout and "ClientApp" in result.stdout
