"""What the Makefile gives the programs it starts, and `make stop`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fesf_fed.deployment.processes import QUIET_FLOWER_ENV, free_port
from server.local_superlink import local_superlink_log, local_superlink_pids

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # -o: never reinstall the package from a test, even when pyproject.toml is newer than the install.
        ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/bin/fesf", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,  # the status is asserted with the output
    )


def _bare_env(**extra: str) -> dict[str, str]:
    """This environment without Flower's switches (`make test` exports them), so only the Makefile can set them."""
    env = {key: value for key, value in os.environ.items() if key not in QUIET_FLOWER_ENV and key != "MAKEFLAGS"}
    return {**env, **extra}


def _fake_venv(folder: Path) -> Path:
    """A virtualenv stand-in whose `flwr` and `fesf-server` record their environment instead of running."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    installed = bin_dir / "fesf"
    installed.touch()
    # Newer than pyproject.toml, so make does not reinstall.
    future = time.time() + 3600
    os.utime(installed, (future, future))
    for program in ("flwr", "fesf-server"):
        (bin_dir / program).write_text(f'#!/bin/sh\nenv > "{folder / program}.env"\n')
        (bin_dir / program).chmod(0o755)
    return folder


def test_make_federate_starts_flower_with_every_switch_off(tmp_path):
    venv = _fake_venv(tmp_path / "venv")
    done = _make("federate", f"VENV={venv}", env=_bare_env())
    assert done.returncode == 0, done.stdout + done.stderr
    seen = dict(line.split("=", 1) for line in (venv / "flwr.env").read_text().splitlines() if "=" in line)
    for key, value in QUIET_FLOWER_ENV.items():
        assert seen.get(key) == value, f"{key} reached flwr as {seen.get(key)!r}, not {value!r}"


def _start_local_superlink(flwr_home: Path) -> None:
    """Start a local SuperLink the way `flwr run .` does (Flower's own helper), on free ports."""
    env = _bare_env(
        **QUIET_FLOWER_ENV,
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    )
    code = "from flwr.cli.local_superlink import _start_local_superlink; _start_local_superlink()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=60)


def _decoy(tmp_path: Path, other_home: Path) -> subprocess.Popen[bytes]:
    """A process that looks like another Flower home's SuperLink: `make stop` must leave it alone."""
    script = tmp_path / "decoy" / "flower-superlink"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    return subprocess.Popen([str(script), "--log-file", str(local_superlink_log(other_home))])


def test_make_stop_stops_this_homes_local_superlink_only(tmp_path):
    home, other_home = tmp_path / "flwr", tmp_path / "other-flwr"
    decoy = _decoy(tmp_path, other_home)
    try:
        _start_local_superlink(home)
        started = local_superlink_pids(home)
        assert len(started) == 1
        assert local_superlink_pids(other_home) == [decoy.pid]
        done = _make("stop", env=_bare_env(FLWR_HOME=str(home)))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Stopped the local SuperLink (PID {started[0]})" in done.stdout
        assert local_superlink_pids(home) == []
        assert decoy.poll() is None, "make stop stopped another Flower home's SuperLink"
        again = _make("stop", env=_bare_env(FLWR_HOME=str(home)))
        assert "No local SuperLink" in again.stdout
    finally:
        for pid in local_superlink_pids(home):
            os.killpg(pid, signal.SIGKILL)
        decoy.kill()
        decoy.wait()


def test_make_federate_refuses_a_bad_setting_before_flower_starts(tmp_path):
    flwr_home = tmp_path / "flwr"
    done = _make("federate", "RUN_CONFIG=mode='nonsense'", env=_bare_env(FLWR_HOME=str(flwr_home)))
    assert done.returncode != 0
    assert "error: run config mode: Input should be 'plaintext', 'x_sy', 'x_su' or 'x_su_prime' (got 'nonsense')" in (
        done.stderr
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert not flwr_home.exists(), "flwr ran (and started a local SuperLink) for a refused setting"
