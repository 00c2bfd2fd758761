"""A deployed round (TLS, SuperNode authentication, one process per message) against the same round simulated.

The deployment is the loopback rehearsal (``deploy/loopback.sh``): a SuperLink with
TLS and authentication and two ``fesf-client`` sites on 127.0.0.1. The baseline is
the same two sites (the rehearsal's own site configs, as a ``sites-file``) with the
same run config in Flower's in-process simulation (``server/simulation.py``), in the
same run of this script. Round times come from each run's ``summary.json``
(``timing/seconds``); the surrogates are built before either federation starts, so
neither is timed building them.

    PYTHONPATH=. python benchmarks/deployment.py            # needs fesf-server/fesf-client: use the venv's python
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fesf_fed, clients, server: run from anywhere

from fesf_fed.deployment.processes import QUIET_FLOWER_ENV, flower_env

# Before Flower and Ray are imported: they read these at import.
for _name, _value in QUIET_FLOWER_ENV.items():
    os.environ.setdefault(_name, _value)

import statistics
import subprocess
import tempfile
import time

import yaml

from fesf_fed.federation.run_summary import GLOBAL, SUMMARY_FILE, RunSummary
from server.run_config import app_run_config
from server.simulation import simulate

ROUNDS = 2


def _round_seconds(summary: RunSummary) -> list[float]:
    return [entry.timing[GLOBAL]["seconds"] for entry in summary.history]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fesf-bench-deploy-") as folder:
        work = Path(folder) / "loopback"
        env = flower_env()  # fesf-server and fesf-client of this Python first on PATH
        began = time.perf_counter()
        subprocess.run(["bash", str(REPO / "deploy" / "loopback.sh"), str(work)], env=env, check=True)
        loopback_seconds = time.perf_counter() - began
        (deployed_run,) = (work / "server-home" / "runs").iterdir()
        deployed = _round_seconds(RunSummary.read(deployed_run / SUMMARY_FILE))

        sites_file = Path(folder) / "sites.yaml"
        sites_file.write_text(yaml.safe_dump({"sites": {s: str(work / f"site-{s}.yaml") for s in ("A", "B")}}))
        os.environ["FESF_HOME"] = str(Path(folder) / "simulation-home")
        outcome = simulate(
            app_run_config(REPO, **{"sites-file": str(sites_file), "num-server-rounds": ROUNDS, "local-epochs": 1}),
            num_supernodes=2,
        )
        simulated = _round_seconds(outcome.summary)

    print(f"loopback rehearsal end to end (keys, builds, {ROUNDS} rounds, shutdown): {loopback_seconds:.1f} s")
    print(f"round seconds, deployed:  {', '.join(f'{s:.1f}' for s in deployed)}")
    print(f"round seconds, simulated: {', '.join(f'{s:.1f}' for s in simulated)}")
    ratio = statistics.mean(deployed) / statistics.mean(simulated)
    print(f"deployed / simulated mean round time: {ratio:.1f}x")


if __name__ == "__main__":
    main()
