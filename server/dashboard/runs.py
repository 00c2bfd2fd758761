"""What the dashboard shows of runs, read from their stores: list rows, a run's details, exports."""

import csv
import io
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fesf_fed.federation.run_summary import RoundMetrics, selected_round
from fesf_fed.progress import SiteProgress
from fesf_fed.task import classification_figures, one_class_answer

from ..liveness import run_state
from ..run_store import GLOBAL, RUN_NAME, StoredRun, stored_runs

#: The classification figures of every evaluation, in the order pages show them. ``auroc`` is absent
#: where a test set holds one class; the federation's is the sites' AUROCs averaged by their test images.
METRICS: tuple[str, ...] = ("accuracy", "balanced-accuracy", "f1", "auroc", "precision", "recall", "loss")
_LABELS = {
    "balanced-accuracy": "balanced accuracy",
    "f1": "macro-F1",
    "auroc": "AUROC",
    "precision": "macro precision",
    "recall": "macro recall",
    "train-loss": "training loss",
}


def metric_label(metric: str) -> str:
    """How pages name a stored metric: ``balanced accuracy`` for ``balanced-accuracy``, ``macro-F1`` for ``f1``."""
    return _LABELS.get(metric, metric)


class UnknownRun(LookupError):
    """A run name that is malformed or has no run store in the dashboard's folder."""


class UnreadableRun(Exception):
    """A run whose store (or model) cannot be read: a damaged or vanished file.

    Its message is one line that names the run, never the server's folders.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"run {name}'s store cannot be read ({reason}); the run folder may be damaged")
        self.name = name


def read_error(exc: BaseException) -> str:
    """One line on why a file could not be read, without its path (an OSError's text names the file)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class RunRow:
    """One row of the runs list."""

    name: str
    #: The stored status, or ``stopped unexpectedly`` for a live run whose server stopped beating.
    status: str
    strategy: str
    mode: str
    model: str
    sites: list[str]
    rounds_done: int
    rounds_total: int
    #: The round whose global model is the run's model: the best pooled validation macro-F1 (earliest on a
    #: tie), else (no site validates) the last round; None before the first round.
    model_round: int | None
    #: That round's pooled validation macro-F1; None where no site validates.
    validation_f1: float | None
    #: The run's model's federated evaluation (the sites' test images): macro-F1, the sites' figures averaged by
    #: their test images.
    f1: float | None
    #: Of that evaluation, pooled over the sites (their summed confusion matrix).
    balanced_accuracy: float | None
    #: Of that evaluation: the sites' AUROCs averaged by their test images (AUROC does not pool); None where
    #: no site's test images held two classes, or the run was stored before AUROC was.
    auroc: float | None
    #: Whether that evaluation found the run's model answering one class for every test image.
    one_class: bool
    started: str
    #: One line on a run that did not simply finish: why, and the command that resumes it (else None).
    note: str | None = None

    @classmethod
    def unreadable(cls, name: str, reason: str) -> "RunRow":
        """The row of a run whose store cannot be read: its name and why, nothing else."""
        return cls(
            name=name,
            status=f"unreadable ({reason})",
            strategy="",
            mode="",
            model="",
            sites=[],
            rounds_done=0,
            rounds_total=0,
            model_round=None,
            validation_f1=None,
            f1=None,
            balanced_accuracy=None,
            auroc=None,
            one_class=False,
            started="",
        )


@dataclass(frozen=True)
class RunDetails:
    """Everything a run page shows, read in one go so a page never mixes two rounds."""

    summary: RunRow
    config: dict[str, Any]
    classes: list[str]
    input: dict[str, int]
    sites: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    #: The run's model's (its round's) central evaluation confusion matrix, or else the sites' summed one.
    confusion: dict[str, Any] | None
    has_model: bool
    #: Each site's latest preparation stage (surrogate build), by site name.
    preparation: list[SiteProgress]
    #: The sites missing from rounds they were sampled for: by round, phase, site, the reason.
    absences: dict[int, dict[str, dict[str, str]]] = field(default_factory=dict)


def open_run(folder: Path, name: str) -> StoredRun:
    """Open run ``name`` under ``folder`` read-only.

    Raises
    ------
    UnknownRun
        If ``name`` is not a run folder name (no path tricks) or holds no store.
    """
    if not RUN_NAME.fullmatch(name) or not (folder / name / "store.sqlite").is_file():
        # The message goes to clients: it names the run, never the server's folder.
        raise UnknownRun(f"no run {name!r} on this dashboard; /api/runs lists every run")
    return StoredRun(folder / name)


def model_round(history: list[dict[str, Any]]) -> int | None:
    """The round whose global model is the run's model (:func:`selected_round` of ``history``); None before any."""
    return selected_round([RoundMetrics.from_json(entry) for entry in history])


def round_entry(history: list[dict[str, Any]], server_round: int | None) -> dict[str, Any]:
    """Round ``server_round``'s entry of ``history`` (empty when it has none)."""
    return next((entry for entry in history if entry["round"] == server_round), {})


def _summary(run: StoredRun, info: dict[str, Any], sites: dict[str, Any], history: list[dict[str, Any]]) -> RunRow:
    """A run's list row, of its model's round; call it within the store's snapshot that read ``history``."""
    config = info.get("config", {})
    chosen = model_round(history)
    # From the round's summed confusion matrix rather than the stored metric, so that runs stored
    # before the federation recorded balanced accuracy show it too.
    pooled = None if chosen is None else run.confusion("evaluate", chosen)
    counts = None if pooled is None else np.asarray(pooled)
    entry = round_entry(history, chosen)
    evaluation = entry.get("evaluate", {}).get(GLOBAL, {})
    rounds_done = max((entry["round"] for entry in history), default=0)
    state = run_state(run.name, run.directory, info, rounds_done, run.absences())
    return RunRow(
        name=run.name,
        status=state.status,
        strategy=config.get("strategy", ""),
        mode=config.get("mode", ""),
        model=config.get("model", ""),
        sites=sorted(sites),
        rounds_done=rounds_done,
        rounds_total=int(info.get("rounds", config.get("num-server-rounds", 0))),
        model_round=chosen,
        validation_f1=entry.get("validation", {}).get(GLOBAL, {}).get("f1"),
        f1=evaluation.get("f1"),
        balanced_accuracy=None if counts is None else classification_figures(counts)["balanced_accuracy"],
        auroc=evaluation.get("auroc"),
        one_class=counts is not None and one_class_answer(counts) is not None,
        started=info.get("started", ""),
        note=state.note,
    )


def list_runs(folder: Path) -> list[RunRow]:
    """Every readable run under ``folder``, newest first; a store that cannot be read is listed as such."""
    summaries = []
    for path in stored_runs(folder):
        try:
            run = StoredRun(path)
            try:
                with run.snapshot():  # the federation may commit a round meanwhile
                    summaries.append(_summary(run, run.info(), run.sites(), run.history()))
            finally:
                run.close()
        except (sqlite3.Error, OSError, ValueError) as exc:
            summaries.append(RunRow.unreadable(path.name, read_error(exc)))
    return sorted(summaries, key=lambda summary: (summary.started, summary.name), reverse=True)


def _confusion(run: StoredRun, classes: list[str], server_round: int | None) -> dict[str, Any] | None:
    """Round ``server_round``'s central confusion matrix, else the sites' summed one, else None."""
    if server_round is None:
        return None
    for phase, source in (("central", "central evaluation"), ("evaluate", "federated evaluation, summed over sites")):
        if counts := run.confusion(phase, server_round):
            return {"round": server_round, "source": source, "classes": classes, "counts": counts}
    return None


def run_details(run: StoredRun) -> RunDetails:
    """Read everything a run page shows from ``run``."""
    with run.snapshot():  # the federation may commit a round meanwhile
        info, sites, history = run.info(), run.sites(), run.history()
        classes = list(info.get("classes", []))
        summary = _summary(run, info, sites, history)
        confusion = _confusion(run, classes, summary.model_round)
        preparation = run.preparation()
        absences = run.absences()
    return RunDetails(
        summary=summary,
        config=info.get("config", {}),
        classes=classes,
        input=info.get("input", {}),
        sites=sites,
        history=history,
        confusion=confusion,
        has_model=run.model_checkpoint_path() is not None,
        preparation=preparation,
        absences=absences,
    )


def read_details(folder: Path, name: str) -> RunDetails:
    """Everything the run page shows of run ``name`` under ``folder``.

    Raises
    ------
    UnknownRun
        For a name that is not a run's.
    UnreadableRun
        For a run whose store cannot be read (overwritten, truncated, unreadable).
    """
    try:
        run = open_run(folder, name)
        try:
            return run_details(run)
        finally:
            run.close()
    except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a stored value that is not JSON
        raise UnreadableRun(name, read_error(exc)) from None


def participation(history: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Per round, the sites whose training reply was aggregated."""
    return {entry["round"]: sorted(set(entry.get("train", {})) - {GLOBAL}) for entry in history}


def series(history: list[dict[str, Any]], phase: str, scope: str, metric: str) -> tuple[list[int], list[float]]:
    """One metric of one phase and scope over the rounds that have it."""
    points = [
        (entry["round"], entry[phase][scope][metric])
        for entry in history
        if metric in entry.get(phase, {}).get(scope, {})
    ]
    return [point[0] for point in points], [point[1] for point in points]


def final_metrics(details: RunDetails) -> dict[str, float]:
    """The federated evaluation of the run's model: its best validation round's (empty before the first round).

    That is the round of ``details.summary.model_round`` (the last one where no site validates). A run
    stored before the federation recorded balanced accuracy gets it from its pooled confusion matrix.
    """
    entry = round_entry(details.history, details.summary.model_round)
    final = dict(entry.get("evaluate", {}).get(GLOBAL, {}))
    if final and details.summary.balanced_accuracy is not None:
        final.setdefault("balanced-accuracy", details.summary.balanced_accuracy)
    return final


def metric_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every stored metric as a flat row: round, phase, scope, metric, value."""
    return [
        {"round": entry["round"], "phase": phase, "scope": scope, "metric": metric, "value": value}
        for entry in history
        for phase, scopes in entry.items()
        if phase != "round"
        for scope, metrics in scopes.items()
        for metric, value in metrics.items()
    ]


def metrics_csv(history: list[dict[str, Any]]) -> str:
    """The run's metrics as CSV, one row per value (what ``metric_rows`` gives)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["round", "phase", "scope", "metric", "value"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(metric_rows(history))
    return buffer.getvalue()


def details_json(details: RunDetails) -> dict[str, Any]:
    """A run's details as JSON: what the run page shows, for scripts."""
    return {
        **asdict(details.summary),
        "config": details.config,
        "classes": details.classes,
        "input": details.input,
        "sites": details.sites,
        "history": details.history,
        "confusion": details.confusion,
        "has_model": details.has_model,
        "preparation": [record.to_json() for record in details.preparation],
        "absences": {str(server_round): phases for server_round, phases in details.absences.items()},
    }
