"""A run whose server dies is shown as stopped unexpectedly, with the command that resumes it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fesf_fed.deployment.processes import flower_env, free_port
from server.cli import main as fesf_server
from server.liveness import HEARTBEAT_FILE, Heartbeat
from server.local_superlink import stop_local_superlink
from server.run_store import RunFolder, runs_folder
from tests.conftest import last_stored_round
from tests.processes import started_with, wait_for
from tests.simulation import REPO, run_config, simulate


def test_the_heartbeat_beats_while_the_run_goes_on_and_stops_with_it(tmp_path):
    beat = tmp_path / HEARTBEAT_FILE
    with Heartbeat(tmp_path, every=0.05):
        first = beat.stat().st_mtime_ns
        time.sleep(0.3)
        assert beat.stat().st_mtime_ns > first
    last = beat.stat().st_mtime_ns
    time.sleep(0.2)
    assert beat.stat().st_mtime_ns == last


def test_status_after_a_run_that_never_began_does_not_report_an_earlier_run(capsys):
    earlier = RunFolder("earlier")
    earlier.set_info(status="finished", rounds=1)
    earlier.close()
    assert fesf_server(["status"]) == 0  # the run written to last
    assert fesf_server(["status", "--since", str(time.time() + 1)]) == 1  # what `make federate` asks
    assert capsys.readouterr().out.splitlines()[-1].startswith("no run was written to ")


@pytest.mark.faults
def test_a_killed_simulation_is_reported_stopped_unexpectedly_and_resumes_with_the_rounds_it_is_given(
    tmp_path, fesf_home, capsys
):
    flwr_home = tmp_path / "flwr"
    env = flower_env(
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
    )
    tiny = "num-server-rounds=30 local-epochs=1 site.data.image_size=16 site.iqem.steps=2 run-name='killed'"
    started = time.time()
    flwr = subprocess.Popen(
        [str(Path(sys.executable).with_name("flwr")), "run", ".", "--stream", "--run-config", tiny],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = runs_folder() / "killed"
    try:
        wait_for(lambda: last_stored_round(run) >= 1, 300, "no round was stored")
        (simulation,) = wait_for(
            lambda: [
                pid
                for pid, command in started_with(fesf_home).items()
                if any(
                    Path(part).name == "flwr-simulation" for part in command.split()[:2]
                )  # the program, run by python
            ],
            10,
            "no flwr-simulation",
        )
        os.kill(simulation, signal.SIGKILL)  # the ServerApp dies with it, mid-run, without a word
        killed_after = last_stored_round(run)
        flwr.communicate(timeout=180)  # Flower's own `flwr run` notices in its own time, and exits 0 regardless
    finally:
        if flwr.poll() is None:
            flwr.kill()
            flwr.communicate()
        stop_local_superlink(flwr_home)
    # What `make federate` prints after `flwr run`: one line, and a status that fails the make.
    assert fesf_server(["status", "--since", str(int(started))]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(
        f"run killed: stopped unexpectedly, round {killed_after} of 30: its server stopped unexpectedly after round "
        f"{killed_after} of 30 (last heartbeat "
    ), line
    assert line.endswith("resume it with --run-config \"resume='killed'\" (flwr run . or fesf-server run)")

    # Resumed with fewer rounds, the run records the rounds it was asked for.
    resumed = run_config(
        **{"num-server-rounds": killed_after + 1, "local-epochs": 1, "site.data.image_size": 16, "site.iqem.steps": 2},
        resume="killed",
    )
    summary = simulate(resumed).summary
    assert summary.status == "finished"
    assert summary.config["num-server-rounds"] == summary.rounds == killed_after + 1
    assert [entry.round for entry in summary.history] == list(range(1, killed_after + 2))
