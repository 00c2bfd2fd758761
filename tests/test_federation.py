"""The federation end to end: Flower simulations of phantom sites, checkpoints, resume, `flwr run`."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fesf_fed.errors import ConfigError
from fesf_fed.processes import flower_env
from fesf_fed.run_settings import parse_run_settings
from server.federation import run_federation
from server.run_store import runs_folder
from tests.simulation import REPO, TINY_RUN, run_config, simulate

#: Small but learnable: 32 px phantoms, 80 per class shared by three sites. With 40 per class
#: the final accuracy swung between 0.59 and 0.9 from one initial model to the next.
LEARNABLE = {
    **TINY_RUN,
    "site.data.image_size": 32,
    "site.data.phantom_per_class": 80,
    "num-server-rounds": 4,
    "local-epochs": 4,
    "partition": "iid",
}


def _only_run() -> Path:
    (run,) = runs_folder().iterdir()
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_simulated_sites_learn_and_the_run_folder_has_everything():
    simulate(run_config(**LEARNABLE, mode="plaintext"))
    run = _only_run()
    summary = _summary(run)
    assert summary["status"] == "finished"
    assert [entry["round"] for entry in summary["history"]] == [1, 2, 3, 4]
    final = summary["final"]
    # Two balanced classes: chance is 0.5. Seeds 0-2 reached 0.94-0.95.
    assert final["accuracy"] >= 0.8, final
    assert set(final["sites"]) == {"site-1", "site-2", "site-3"}
    for metrics in final["sites"].values():
        assert {"accuracy", "precision", "recall", "f1", "loss", "num-examples"} <= set(metrics)
    assert summary["config"]["mode"] == "plaintext"
    assert set(summary["sites"]) == {"site-1", "site-2", "site-3"}
    assert [path.name for path in sorted((run / "checkpoints").iterdir())] == ["round-0003.pt", "round-0004.pt"]
    with sqlite3.connect(run / "store.sqlite") as store:
        rows = store.execute("SELECT COUNT(*) FROM metrics WHERE phase = 'evaluate' AND scope = 'site-2'").fetchone()
    assert rows[0] > 0


def test_a_run_repeated_with_the_same_seed_gives_the_same_figures(finished_run, fesf_home):
    # The session's run had the same config. With the same site keys (they pick each image's
    # host), the surrogates rebuilt in this FESF_HOME and every figure must be the same.
    shutil.copytree(finished_run.home / "secrets", fesf_home / "secrets")
    simulate(run_config(**TINY_RUN))
    first, second = _summary(finished_run.folder)["history"], _summary(_only_run())["history"]
    assert [(entry["train"], entry["evaluate"]) for entry in first] == [
        (entry["train"], entry["evaluate"]) for entry in second
    ]


def test_surrogate_sites_report_quality_and_a_stopped_run_resumes_from_its_checkpoint():
    simulate(run_config(**{**TINY_RUN, "num-server-rounds": 1}, strategy="fedadam"))
    run = _only_run()
    first = _summary(run)
    assert first["status"] == "finished"
    assert "ssim-x_pl-x_su_prime" in first["sites"]["site-1"]
    checkpoint = torch.load(run / "checkpoints" / "round-0001.pt", weights_only=True)
    assert set(checkpoint["strategy"]) == {"m_t", "v_t"}  # FedAdam's moments survive a restart

    simulate(run_config(**TINY_RUN, strategy="fedadam", resume=run.name))
    resumed = _summary(run)
    assert resumed["status"] == "finished"
    assert [entry["round"] for entry in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]  # round 1 was not run again
    assert resumed["flower_run"] != first["flower_run"]


def test_resuming_with_a_different_model_is_refused(finished_run):
    run = runs_folder() / finished_run.folder.name
    shutil.copytree(finished_run.folder, run)
    settings, site_defaults = parse_run_settings(run_config(**TINY_RUN, model="resnet34", resume=run.name))
    with pytest.raises(ConfigError, match=f"run config model: run {run.name} used 'smallcnn', not 'resnet34'"):
        run_federation(None, settings, site_defaults, "ignored")
    assert _summary(run)["status"] == "finished"


def test_resuming_an_unknown_run_is_a_clear_error():
    settings, site_defaults = parse_run_settings(run_config(resume="12345"))
    with pytest.raises(ConfigError, match="resume: no run '12345'"):
        run_federation(None, settings, site_defaults, "ignored")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _superlink_pids(port: int) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*--port {port}"], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


def test_flwr_run_runs_the_app_and_leaves_a_summary(tmp_path, fesf_home):
    http_port, control_port = _free_port(), _free_port()
    flwr = Path(sys.executable).with_name("flwr")
    # flwr starts `flower-superlink` (and it `flwr-simulation`) from PATH, which flower_env puts first.
    env = flower_env(
        FLWR_HOME=str(tmp_path / "flwr"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
    )
    tiny = "num-server-rounds=1 local-epochs=1 site.data.image_size=16 site.data.phantom_per_class=8 site.iqem.steps=2"
    try:
        done = subprocess.run(
            [str(flwr), "run", ".", "--stream", "--run-config", tiny],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,  # the exit status is asserted below, with the output
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "Round 1/1: accuracy" in output
        summary = _summary(_only_run())
        assert summary["status"] == "finished"
        assert set(summary["final"]["sites"]) == {"site-1", "site-2", "site-3"}
    finally:
        # `flwr run` leaves its local SuperLink running in the background: stop it by PID.
        for pid in _superlink_pids(http_port):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _superlink_pids(http_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _superlink_pids(http_port):
            os.kill(pid, signal.SIGKILL)
