"""A federated run's folder: ``$FESF_HOME/runs/<run-id>/``.

::

    store.sqlite            the run store: settings, sites and every metric of every round
    checkpoints/round-NNNN.pt   global model and strategy state after round NNNN (last few kept)
    summary.json            config, per-round history and final metrics, rewritten each round

The store is what the dashboard reads; ``summary.json`` is the same content for
people and scripts. A checkpoint is written before its round's metrics are
committed, and a resumed run drops metrics of rounds after its checkpoint, so the
store never holds a round that the model does not reflect.
"""

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import torch

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.errors import ConfigError
from fesf_fed.home import fesf_home, private_folder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, details TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,   -- train, evaluate (federated), central, or timing
    scope TEXT NOT NULL,   -- global, or a site name
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (round, phase, scope, name)
);
"""
#: The scope of a metric that describes the whole federation rather than one site.
GLOBAL = "global"


def runs_folder() -> Path:
    """Where runs are kept: ``$FESF_HOME/runs``."""
    return fesf_home() / "runs"


class RunFolder:
    """One run's store, checkpoints and summary.

    Parameters
    ----------
    name : str
        The run's folder name (Flower's run id of the run that started it).
    must_exist : bool
        True when resuming: a missing run is an error rather than a new folder.
    """

    def __init__(self, name: str, must_exist: bool = False) -> None:
        self.directory = runs_folder() / name
        if must_exist and not (self.directory / "store.sqlite").exists():
            raise ConfigError(
                f"run config resume: no run {name!r} in {runs_folder()}; give the id of a run folder there"
            )
        private_folder(self.directory / "checkpoints")
        store = self.directory / "store.sqlite"
        # Created private before sqlite opens it: metrics and site details derive from patient data.
        os.close(os.open(store, os.O_CREAT | os.O_RDWR, 0o600))
        self.store = sqlite3.connect(store)
        self.store.executescript(_SCHEMA)

    @property
    def name(self) -> str:
        return self.directory.name

    def close(self) -> None:
        self.store.close()

    def set_info(self, **values: Any) -> None:
        """Store run-level values (settings, status, times) as JSON, by key."""
        with self.store:
            self.store.executemany(
                "INSERT OR REPLACE INTO info VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    def info(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.store.execute("SELECT key, value FROM info")}

    def set_site(self, name: str, details: dict[str, Any]) -> None:
        with self.store:
            self.store.execute(
                "INSERT OR REPLACE INTO sites VALUES (?, ?)",
                (name, json.dumps(details)),
            )

    def sites(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(details) for name, details in self.store.execute("SELECT name, details FROM sites")}

    def record(self, server_round: int, phase: str, scope: str, metrics: dict[str, float]) -> None:
        """Store one round's metrics of one phase for the federation (``GLOBAL``) or one site."""
        with self.store:
            self.store.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                [(server_round, phase, scope, name, float(value)) for name, value in metrics.items()],
            )

    def drop_rounds_after(self, server_round: int) -> None:
        with self.store:
            self.store.execute("DELETE FROM metrics WHERE round > ?", (server_round,))

    def history(self) -> list[dict[str, Any]]:
        """Per round: ``{"round": r, phase: {scope: {metric: value}}}``, in round order."""
        rounds: dict[int, dict[str, Any]] = {}
        rows = self.store.execute(
            "SELECT round, phase, scope, name, value FROM metrics ORDER BY round, phase, scope, name"
        )
        for server_round, phase, scope, name, value in rows:
            entry = rounds.setdefault(server_round, {"round": server_round})
            entry.setdefault(phase, {}).setdefault(scope, {})[name] = value
        return list(rounds.values())

    def _checkpoints(self) -> list[Path]:
        return sorted((self.directory / "checkpoints").glob("round-*.pt"))

    def save_checkpoint(self, server_round: int, state: dict[str, Any], keep: int) -> Path:
        """Write the state after ``server_round`` atomically; keep the newest ``keep`` checkpoints."""
        path = self.directory / "checkpoints" / f"round-{server_round:04d}.pt"
        with atomic_writer(path) as stream:
            torch.save({"round": server_round, **state}, stream)
        for old in self._checkpoints()[:-keep]:
            old.unlink()
        return path

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint (``round`` and what was saved with it), or None."""
        checkpoints = self._checkpoints()
        return torch.load(checkpoints[-1], weights_only=True) if checkpoints else None

    def write_summary(self, final: dict[str, Any] | None) -> Path:
        """Write ``summary.json`` from the store, with the final metrics once the run has them."""
        path = self.directory / "summary.json"
        write_json(
            path,
            {
                "run": self.name,
                **self.info(),
                "sites": self.sites(),
                "history": self.history(),
                "final": final,
            },
        )
        return path
