"""A federated run's folder: ``$FESF_HOME/runs/<run-id>/``.

::

    store.sqlite            the run store: settings, sites (and how far their preparation got), every metric
                            and confusion matrix of every round
    checkpoints/round-NNNN.pt   global model and strategy state after round NNNN (last few kept)
    checkpoints/best.pt     the global model of the round with the best validation macro-F1: the run's
                            result, which evaluation, ``fesf predict`` and the results tables use
    summary.json            config, per-round history and final metrics, rewritten each round

The folder is named by the run's ``run-name``, else by Flower's run id. The federation
writes through :class:`RunFolder`; the dashboard reads through :class:`StoredRun`, which
opens the store read-only. ``summary.json`` is the same content for people and scripts,
a :class:`~fesf_fed.federation.run_summary.RunSummary`. A checkpoint is written before
its round's metrics are committed, and a resumed run drops metrics of rounds after its
checkpoint, so the store never holds a round that the model does not reflect.
"""

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.errors import ConfigError
from fesf_fed.federation.run_summary import (
    GLOBAL,
    SUMMARY_FILE,
    FinalMetrics,
    RoundMetrics,
    RunSummary,
    selected_round,
)
from fesf_fed.federation.settings import RUN_NAME
from fesf_fed.home import fesf_home, private_folder
from fesf_fed.progress import SiteProgress

from .liveness import LIVE_STATUSES, RunState, run_state

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
CREATE TABLE IF NOT EXISTS absences (
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,   -- train or evaluate
    site TEXT NOT NULL,    -- a site the strategy sampled that sent no usable reply
    reason TEXT NOT NULL,
    PRIMARY KEY (round, phase, site)
);
CREATE TABLE IF NOT EXISTS confusion (
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,   -- evaluate (per site, and their sum as global) or central
    scope TEXT NOT NULL,
    counts TEXT NOT NULL,  -- JSON rows: true class; columns: predicted class
    PRIMARY KEY (round, phase, scope)
);
"""
#: The info key of the sites' latest preparation records.
_PREPARATION = "preparation"
#: The file name of the best round's model in a run's ``checkpoints`` folder.
BEST_CHECKPOINT = "best.pt"
# GLOBAL (the scope of the federation's own metrics) and RUN_NAME (what a run folder may be
# called), imported above, live beside the summary and the run settings: fesf_fed reads them too.


def runs_folder() -> Path:
    """Where runs are kept: ``$FESF_HOME/runs``."""
    return fesf_home() / "runs"


def run_exists(name: str) -> bool:
    """Whether ``$FESF_HOME/runs/<name>`` holds a run (its store): the one test of a taken name."""
    return (runs_folder() / name / "store.sqlite").exists()


def _refused_before_it_began(name: str) -> bool:
    """Whether run ``name`` is one whose settings were refused: failed, with no checkpoint to lose."""
    run = StoredRun(runs_folder() / name)
    try:
        return run.info().get("status") == "failed" and run.latest_checkpoint_path() is None
    finally:
        run.close()


def check_new_run_name(name: str) -> None:
    """Refuse ``run-name`` ``name`` when a run of that name is in the runs folder already.

    A run refused for its settings before it began may be run again under its name, corrected.

    Raises
    ------
    ConfigError
        Telling the user to choose another name or to resume that run.
    """
    if run_exists(name) and not _refused_before_it_began(name):
        raise ConfigError(
            f"run config run-name: a run {name!r} exists already in {runs_folder()}; "
            f"choose another run-name, or continue that run with resume='{name}'"
        )


class _Store:
    """What both the writer and the reader of a run read: settings, sites, metrics, checkpoints."""

    directory: Path
    store: sqlite3.Connection

    @property
    def name(self) -> str:
        return self.directory.name

    def close(self) -> None:
        self.store.close()

    def info(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.store.execute("SELECT key, value FROM info")}

    def sites(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(details) for name, details in self.store.execute("SELECT name, details FROM sites")}

    def preparation(self) -> list[SiteProgress]:
        """Each site's latest preparation record, by site name (none before preparation began)."""
        row = self.store.execute("SELECT value FROM info WHERE key = ?", (_PREPARATION,)).fetchone()
        return [] if row is None else [SiteProgress.from_json(record) for record in json.loads(row[0])]

    def history(self) -> list[dict[str, Any]]:
        """Per round: ``{"round": r, phase: {scope: {metric: value}}}``, in round order (:meth:`rounds`' JSON)."""
        rounds: dict[int, dict[str, Any]] = {}
        rows = self.store.execute(
            "SELECT round, phase, scope, name, value FROM metrics ORDER BY round, phase, scope, name"
        )
        for server_round, phase, scope, name, value in rows:
            entry = rounds.setdefault(server_round, {"round": server_round})
            entry.setdefault(phase, {}).setdefault(scope, {})[name] = value
        return list(rounds.values())

    def rounds(self) -> list[RoundMetrics]:
        """Every stored round's metrics, in round order."""
        return [RoundMetrics.from_json(entry) for entry in self.history()]

    def absences(self) -> dict[int, dict[str, dict[str, str]]]:
        """The sites a round sampled that sent no usable reply: by round, phase, site, the reason."""
        # A store written before absences were recorded has no such table, and a read-only reader cannot add it.
        if not self.store.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'absences'").fetchone():
            return {}
        absences: dict[int, dict[str, dict[str, str]]] = {}
        for server_round, phase, site, reason in self.store.execute(
            "SELECT round, phase, site, reason FROM absences ORDER BY round, phase, site"
        ):
            absences.setdefault(server_round, {}).setdefault(phase, {})[site] = reason
        return absences

    def last_round(self) -> int:
        """The last stored round (0 before the first)."""
        return int(self.store.execute("SELECT COALESCE(MAX(round), 0) FROM metrics").fetchone()[0])

    def state(self, now: float | None = None) -> RunState:
        """How the run stands: its stored status, or ``stopped unexpectedly`` when its server stopped beating."""
        return run_state(self.name, self.directory, self.info(), self.last_round(), self.absences(), now)

    def confusion(self, phase: str, server_round: int, scope: str = GLOBAL) -> list[list[int]] | None:
        """Round ``server_round``'s confusion matrix of ``phase`` and ``scope`` (rows: true class), or None."""
        row = self.store.execute(
            "SELECT counts FROM confusion WHERE phase = ? AND scope = ? AND round = ?",
            (phase, scope, server_round),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def _checkpoints(self) -> list[Path]:
        return sorted((self.directory / "checkpoints").glob("round-*.pt"))

    def latest_checkpoint_path(self) -> Path | None:
        checkpoints = self._checkpoints()
        return checkpoints[-1] if checkpoints else None

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint (``round`` and what was saved with it), or None."""
        path = self.latest_checkpoint_path()
        return torch.load(path, map_location="cpu", weights_only=True) if path else None

    @property
    def best_checkpoint_path(self) -> Path:
        """Where the best validation round's model is (or will be) written: ``checkpoints/best.pt``."""
        return self.directory / "checkpoints" / BEST_CHECKPOINT

    def best_checkpoint(self) -> dict[str, Any] | None:
        """The best round's model (``round`` and ``arrays``), or None (no site validates, or no round yet)."""
        path = self.best_checkpoint_path
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def model_checkpoint_path(self) -> Path | None:
        """The file holding the run's resulting model, that of :func:`selected_round`, or None before any round.

        The newest round's checkpoint when it is that round: also after an interruption between a
        round's metrics and its ``best.pt``, which a resume mends but a run never resumed keeps.
        Else ``best.pt`` (an earlier round, whose own checkpoint may be pruned); without one (no site
        validates), the newest checkpoint.
        """
        latest = self.latest_checkpoint_path()
        if latest is not None and int(latest.stem.removeprefix("round-")) == selected_round(self.rounds()):
            return latest
        return self.best_checkpoint_path if self.best_checkpoint_path.is_file() else latest

    def model_checkpoint(self) -> dict[str, Any] | None:
        """The run's resulting model (``round`` and ``arrays``; see :meth:`model_checkpoint_path`), or None."""
        path = self.model_checkpoint_path()
        return torch.load(path, map_location="cpu", weights_only=True) if path else None


class StoredRun(_Store):
    """A run folder opened read-only, as the dashboard reads it while the federation may be writing.

    Parameters
    ----------
    directory : Path
        The run's folder, holding ``store.sqlite``.

    Raises
    ------
    FileNotFoundError
        If the folder has no store.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        path = self.directory / "store.sqlite"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no run store here")
        # mode=ro: SQLite itself refuses every write, whatever the file's permissions.
        self.store = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read inside one transaction: everything read sees the same committed rounds."""
        self.store.execute("BEGIN")
        try:
            yield
        finally:
            self.store.rollback()


def stored_runs(folder: Path) -> list[Path]:
    """The run folders (those holding a store) directly under ``folder``, by name."""
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.iterdir() if RUN_NAME.fullmatch(path.name) and (path / "store.sqlite").is_file()
    )


def newest_run(folder: Path) -> Path | None:
    """The run folder under ``folder`` whose store was written last (a resumed run counts as new), or None."""
    runs = stored_runs(folder)
    return max(runs, key=lambda path: (path / "store.sqlite").stat().st_mtime_ns) if runs else None


def describe_run(directory: Path, now: float | None = None) -> tuple[RunState, str]:
    """How the run in ``directory`` stands, and that in one line (a damaged store is said to be so)."""
    try:
        run = StoredRun(directory)
        try:
            with run.snapshot():
                state = run.state(now)
                info, done = run.info(), run.last_round()
        finally:
            run.close()
    except (sqlite3.Error, OSError, ValueError) as exc:
        state = RunState(
            "unreadable", f"its store cannot be read ({str(exc).splitlines()[0]}); the folder may be damaged"
        )
        return state, f"run {directory.name}: {state.note}"
    return state, state.line(directory.name, done, int(info.get("rounds", done)))


def mark_stopped(name: str) -> None:
    """Record that run ``name``'s server was stopped (by its operator), unless the run had ended already.

    For a wrapper that stopped the processes of a run that could not say so itself.
    """
    run = RunFolder(name, must_exist=True)
    try:
        if run.info().get("status") in LIVE_STATUSES:
            run.set_info(status="stopped")
            run.write_summary(final=None)
    finally:
        run.close()


class RunFolder(_Store):
    """One run's store, checkpoints and summary, opened for writing by the federation.

    Parameters
    ----------
    name : str
        The run's folder name: its ``run-name``, else Flower's run id of the run that started it.
    must_exist : bool
        True when resuming: a missing run is an error rather than a new folder.
    must_be_new : bool
        True for a run named by ``run-name``: a run of that name is an error (:func:`check_new_run_name`).
    """

    def __init__(self, name: str, must_exist: bool = False, must_be_new: bool = False) -> None:
        self.directory = runs_folder() / name
        if must_exist and not run_exists(name):
            raise ConfigError(
                f"run config resume: no run {name!r} in {runs_folder()}; give the id of a run folder there"
            )
        if must_be_new:
            check_new_run_name(name)
        private_folder(self.directory / "checkpoints")
        store = self.directory / "store.sqlite"
        if not store.exists():
            # Made whole beside it, then moved into place: a reader never finds a store without its tables.
            # Created private before sqlite opens it: metrics and site details derive from patient data.
            fresh = store.with_name("store.sqlite.new")
            fresh.unlink(missing_ok=True)
            os.close(os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            with closing(sqlite3.connect(fresh)) as new:
                new.executescript(_SCHEMA)
            os.replace(fresh, store)
        self.store = sqlite3.connect(store)
        self.store.executescript(_SCHEMA)  # a store from an older version gets the tables added since

    def set_info(self, **values: Any) -> None:
        """Store run-level values (settings, status, times) as JSON, by key."""
        with self.store:
            self.store.executemany(
                "INSERT OR REPLACE INTO info VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    def set_preparation(self, records: list[SiteProgress]) -> None:
        """Store the sites' latest preparation records, replacing the previous ones."""
        self.set_info(**{_PREPARATION: [record.to_json() for record in sorted(records, key=lambda r: r.site)]})

    def set_site(self, name: str, details: dict[str, Any]) -> None:
        with self.store:
            self.store.execute(
                "INSERT OR REPLACE INTO sites VALUES (?, ?)",
                (name, json.dumps(details)),
            )

    def record(self, server_round: int, phase: str, scope: str, metrics: dict[str, float]) -> None:
        """Store one round's metrics of one phase for the federation (``GLOBAL``) or one site."""
        with self.store:
            self.store.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                [(server_round, phase, scope, name, float(value)) for name, value in metrics.items()],
            )

    def record_confusion(self, server_round: int, phase: str, scope: str, counts: list[list[int]]) -> None:
        """Store one round's confusion matrix (rows: true class) of one phase and scope."""
        with self.store:
            self.store.execute(
                "INSERT OR REPLACE INTO confusion VALUES (?, ?, ?, ?)",
                (server_round, phase, scope, json.dumps(counts)),
            )

    def record_absences(self, server_round: int, phase: str, missing: dict[str, str]) -> None:
        """Store the sites of ``phase`` in round ``server_round`` that sent no usable reply, with the reason."""
        with self.store:
            self.store.executemany(
                "INSERT OR REPLACE INTO absences VALUES (?, ?, ?, ?)",
                [(server_round, phase, site, reason) for site, reason in missing.items()],
            )

    def drop_rounds_after(self, server_round: int) -> None:
        with self.store:
            for table in ("metrics", "confusion", "absences"):
                self.store.execute(f"DELETE FROM {table} WHERE round > ?", (server_round,))  # a fixed table name

    def save_checkpoint(self, server_round: int, state: dict[str, Any], keep: int) -> Path:
        """Write the state after ``server_round`` atomically; keep the newest ``keep`` checkpoints."""
        path = self.directory / "checkpoints" / f"round-{server_round:04d}.pt"
        with atomic_writer(path) as stream:
            torch.save({"round": server_round, **state}, stream)
        for old in self._checkpoints()[:-keep]:
            old.unlink()
        return path

    def save_best(self, server_round: int, arrays: dict[str, torch.Tensor]) -> Path:
        """Write ``server_round``'s global model as the run's best (``checkpoints/best.pt``), atomically."""
        with atomic_writer(self.best_checkpoint_path) as stream:
            torch.save({"round": server_round, "arrays": arrays}, stream)
        return self.best_checkpoint_path

    def summary(self, final: FinalMetrics | None = None) -> RunSummary:
        """The run as the store holds it now, with ``final`` once the run has its final metrics."""
        stored = {
            "run": self.name,
            **self.info(),
            "sites": self.sites(),
            "history": self.history(),
            "absences": [
                {"round": server_round, "phase": phase, "site": site, "reason": reason}
                for server_round, phases in self.absences().items()
                for phase, sites in phases.items()
                for site, reason in sites.items()
            ],
            "final": final,
        }
        return RunSummary.from_json(stored)

    def write_summary(self, final: FinalMetrics | None) -> RunSummary:
        """Write ``summary.json`` (atomically) from the store, with the final metrics once the run has them."""
        summary = self.summary(final)
        write_json(self.directory / SUMMARY_FILE, summary.to_json())
        return summary
