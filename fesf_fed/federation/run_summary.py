"""A federated run's summary, ``$FESF_HOME/runs/<run>/summary.json``, as typed objects.

The federation rewrites the summary from its run store every round (see
``server/run_store.py``); people, scripts and ``fesf-server run`` read it. Its JSON
keys are those the file has always had: the run-level values the store keeps (status,
settings, times, classes, ...), ``sites``, ``history`` (one entry per round: phase,
scope, metric) and ``final`` (the last round's figures once the run has finished).
:meth:`RunSummary.read` checks a file against this layout and says in one line what
is wrong with it; every ``from_json`` raises ``ValueError`` naming the part at fault.

This module does not import Flower: scripts read summaries without it.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fesf_fed.errors import FesfError
from fesf_fed.progress import SiteProgress

#: The file name of a run's summary in its folder.
SUMMARY_FILE = "summary.json"
#: The scope of a metric that describes the whole federation rather than one site.
GLOBAL = "global"
#: What a round's metrics are stored under: training, federated evaluation, central evaluation, round time.
PHASES: tuple[str, ...] = ("train", "evaluate", "central", "timing")
#: The phases whose confusion matrices the final metrics keep: the sites' summed one and the central one.
CONFUSION_PHASES: tuple[str, ...] = ("evaluate", "central")
#: What a run can be doing; ``failed`` comes with an ``error``.
RUN_STATUSES: tuple[str, ...] = ("preparing", "running", "finished", "stopped", "failed")
#: The federation's figures that the final metrics give on their own, by JSON key.
FINAL_FIGURES: tuple[str, ...] = ("accuracy", "balanced-accuracy", "precision", "recall", "f1", "loss")

#: Figures by metric name, e.g. ``{"accuracy": 0.9, "num-examples": 12}``.
Metrics = Mapping[str, float]
#: A confusion matrix: rows are true classes, columns predicted ones.
Matrix = tuple[tuple[int, ...], ...]
#: A run-config value, as Flower carries it.
ConfigValue = str | int | float | bool


# --- checking JSON ---------------------------------------------------------------------------


def _fail(where: str, expected: str, value: Any) -> NoReturn:
    shown = repr(value)
    raise ValueError(f"{where}: expected {expected}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _object(value: Any, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] | None = None) -> dict:
    """``value`` as a JSON object that has the ``required`` keys and, unless ``optional`` is None, no others."""
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        _fail(where, "an object", value)
    if missing := [key for key in required if key not in value]:
        raise ValueError(f"{where}: {', '.join(map(repr, missing))} missing")
    if optional is not None and (unknown := sorted(set(value) - set(required) - set(optional))):
        raise ValueError(f"{where}: unknown key {', '.join(map(repr, unknown))}")
    return dict(value)


def _number(value: Any, where: str) -> float:
    # JSON has no integer type of its own: an int is a number too (and stays an int, as written).
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, "a number", value)
    return value


def _optional_number(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, "an integer", value)
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, "a string", value)
    return value


def _optional_string(value: Any, where: str) -> str | None:
    return None if value is None else _string(value, where)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        _fail(where, "a list of strings", value)
    return tuple(_string(item, f"{where}[{index}]") for index, item in enumerate(value))


def _metrics(value: Any, where: str) -> dict[str, float]:
    return {name: _number(figure, f"{where}.{name}") for name, figure in _object(value, where).items()}


def _by_scope(value: Any, where: str) -> dict[str, dict[str, float]]:
    return {scope: _metrics(metrics, f"{where}.{scope}") for scope, metrics in _object(value, where).items()}


def _matrix(value: Any, where: str) -> Matrix:
    if not isinstance(value, list | tuple) or not all(isinstance(row, list | tuple) for row in value):
        _fail(where, "a confusion matrix (a list of rows of counts)", value)
    rows = tuple(
        tuple(_integer(count, f"{where}[{row}][{column}]") for column, count in enumerate(counts))
        for row, counts in enumerate(value)
    )
    if any(len(row) != len(rows) for row in rows):
        _fail(where, "a square confusion matrix", value)
    return rows


def _json_matrix(matrix: Matrix) -> list[list[int]]:
    return [list(row) for row in matrix]


# --- the parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundMetrics:
    """One round's metrics, by phase and scope, as the run store keeps them.

    Attributes
    ----------
    round : int
        The server round, from 1.
    train, evaluate, central, timing : Mapping
        Each phase's figures by scope (:data:`GLOBAL` or a site name), then by metric
        name, e.g. ``evaluate["site-1"]["f1"]``; empty when the round has none of that phase.
        ``central`` and ``timing`` (``seconds``) have the global scope only.
    """

    round: int
    train: Mapping[str, Metrics] = field(default_factory=dict)
    evaluate: Mapping[str, Metrics] = field(default_factory=dict)
    central: Mapping[str, Metrics] = field(default_factory=dict)
    timing: Mapping[str, Metrics] = field(default_factory=dict)

    def figures(self, phase: str, scope: str = GLOBAL) -> Metrics:
        """The figures of one phase and scope (empty when the round has none)."""
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: choose from {', '.join(PHASES)}")
        by_scope: Mapping[str, Metrics] = getattr(self, phase)
        return by_scope.get(scope, {})

    def to_json(self) -> dict[str, Any]:
        """``{"round": r, phase: {scope: {metric: value}}}``, with the phases the round has."""
        phases = {phase: getattr(self, phase) for phase in PHASES}
        return {
            "round": self.round,
            **{
                phase: {scope: dict(metrics) for scope, metrics in by_scope.items()}
                for phase, by_scope in phases.items()
                if by_scope
            },
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "round") -> "RoundMetrics":
        """Rebuild a round from :meth:`to_json`'s dict.

        Raises
        ------
        ValueError
            Naming the part of ``data`` (under ``where``) that is malformed.
        """
        entry = _object(data, where, required=("round",), optional=PHASES)
        phases = {phase: _by_scope(entry[phase], f"{where}.{phase}") for phase in PHASES if phase in entry}
        return cls(round=_integer(entry["round"], f"{where}.round"), **phases)


@dataclass(frozen=True)
class CentralMetrics:
    """The last round's evaluation of the global model on the server's own test set (``central-eval``).

    Attributes
    ----------
    figures : Mapping
        Its figures by metric name (accuracy, balanced-accuracy, precision, recall, f1, loss, examples).
    one_class : bool
        Whether the model answered one class for every image of the set.
    """

    figures: Metrics
    one_class: bool

    def to_json(self) -> dict[str, Any]:
        """The figures with ``one_class`` among them, as ``final["central"]`` stores them."""
        return {**self.figures, "one_class": self.one_class}

    @classmethod
    def from_json(cls, data: Any, where: str = "central") -> "CentralMetrics":
        """Rebuild the central metrics from :meth:`to_json`'s dict.

        Raises
        ------
        ValueError
            Naming the part of ``data`` that is malformed.
        """
        entry = _object(data, where, required=("one_class",))
        one_class = entry.pop("one_class")
        if not isinstance(one_class, bool):
            _fail(f"{where}.one_class", "true or false", one_class)
        return cls(figures=_metrics(entry, where), one_class=one_class)


@dataclass(frozen=True)
class FinalMetrics:
    """The last round's evaluation of the global model: the run's result (``final`` in the summary).

    Attributes
    ----------
    round : int or None
        The round they are from; None when the run stored no round.
    accuracy, balanced_accuracy, precision, recall, f1, loss : float or None
        The federated evaluation's global figures (JSON keys :data:`FINAL_FIGURES`); precision,
        recall and F1 are the sites' macro figures averaged by their example counts, balanced
        accuracy is that of the sites' summed confusion matrix. None when the round has none.
    sites : Mapping
        Each site's own evaluation figures, by site name.
    central : CentralMetrics or None
        The evaluation on the server's test set, if the run has one.
    confusion : Mapping
        The latest confusion matrices by phase: ``evaluate`` (summed over the sites) and
        ``central``, where the run has them.
    one_class : bool
        Whether the model answered one class for every site test image (by the summed matrix):
        it has not learned, whatever its accuracy.
    """

    round: int | None
    accuracy: float | None
    balanced_accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    loss: float | None
    sites: Mapping[str, Metrics]
    central: CentralMetrics | None = None
    confusion: Mapping[str, Matrix] = field(default_factory=dict)
    one_class: bool = False

    def figure(self, key: str) -> float | None:
        """A global figure by its JSON key, e.g. ``figure("balanced-accuracy")``."""
        if key not in FINAL_FIGURES:
            raise ValueError(f"final figure {key!r}: choose from {', '.join(FINAL_FIGURES)}")
        value: float | None = getattr(self, key.replace("-", "_"))
        return value

    def to_json(self) -> dict[str, Any]:
        """The JSON of ``final``: ``central`` and ``confusion`` only where the run has them."""
        data: dict[str, Any] = {
            "round": self.round,
            **{key: self.figure(key) for key in FINAL_FIGURES},
            "sites": {site: dict(metrics) for site, metrics in self.sites.items()},
            "one_class": self.one_class,
        }
        if self.central is not None:
            data["central"] = self.central.to_json()
        if self.confusion:
            data["confusion"] = {phase: _json_matrix(matrix) for phase, matrix in self.confusion.items()}
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "final") -> "FinalMetrics":
        """Rebuild the final metrics from :meth:`to_json`'s dict.

        Raises
        ------
        ValueError
            Naming the part of ``data`` that is malformed.
        """
        entry = _object(
            data, where, required=("round", *FINAL_FIGURES, "sites", "one_class"), optional=("central", "confusion")
        )
        if not isinstance(entry["one_class"], bool):
            _fail(f"{where}.one_class", "true or false", entry["one_class"])
        confusion = _object(entry.get("confusion", {}), f"{where}.confusion", optional=CONFUSION_PHASES)
        figures = {key: _optional_number(entry[key], f"{where}.{key}") for key in FINAL_FIGURES}
        return cls(
            round=None if entry["round"] is None else _integer(entry["round"], f"{where}.round"),
            accuracy=figures["accuracy"],
            balanced_accuracy=figures["balanced-accuracy"],
            precision=figures["precision"],
            recall=figures["recall"],
            f1=figures["f1"],
            loss=figures["loss"],
            sites=_by_scope(entry["sites"], f"{where}.sites"),
            central=None if "central" not in entry else CentralMetrics.from_json(entry["central"], f"{where}.central"),
            confusion={phase: _matrix(rows, f"{where}.confusion.{phase}") for phase, rows in confusion.items()},
            one_class=entry["one_class"],
        )


@dataclass(frozen=True)
class SiteDetails:
    """What a site reported when it prepared its data (``sites`` in the summary).

    Attributes
    ----------
    classes : tuple of str
        Its class names, in label order.
    channels, image_size : int
        Its images' channels and size in pixels (JSON key ``image-size``).
    figures : Mapping
        Its image counts (``train-examples``, ``test-examples``) and surrogate quality
        (``ssim-...``, ``psnr-...``), by name.
    """

    classes: tuple[str, ...]
    channels: int
    image_size: int
    figures: Metrics = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The site's entry, its figures beside ``classes``, ``channels`` and ``image-size``."""
        return {**self.figures, "classes": list(self.classes), "channels": self.channels, "image-size": self.image_size}

    @classmethod
    def from_json(cls, data: Any, where: str = "site") -> "SiteDetails":
        """Rebuild a site's details from :meth:`to_json`'s dict.

        Raises
        ------
        ValueError
            Naming the part of ``data`` that is malformed.
        """
        entry = _object(data, where, required=("classes", "channels", "image-size"))
        return cls(
            classes=_strings(entry.pop("classes"), f"{where}.classes"),
            channels=_integer(entry.pop("channels"), f"{where}.channels"),
            image_size=_integer(entry.pop("image-size"), f"{where}.image-size"),
            figures=_metrics(entry, where),
        )


@dataclass(frozen=True)
class ModelInput:
    """The images the run's model takes (``input`` in the summary): what the diagnosis service builds it for."""

    channels: int
    image_size: int

    def to_json(self) -> dict[str, int]:
        return {"channels": self.channels, "image-size": self.image_size}

    @classmethod
    def from_json(cls, data: Any, where: str = "input") -> "ModelInput":
        """Rebuild it from :meth:`to_json`'s dict; ``ValueError`` naming what is malformed."""
        entry = _object(data, where, required=("channels", "image-size"), optional=())
        return cls(
            _integer(entry["channels"], f"{where}.channels"), _integer(entry["image-size"], f"{where}.image-size")
        )


# --- the summary -----------------------------------------------------------------------------

#: Summary keys written only once the run has a value for them.
_OPTIONAL_KEYS = ("started", "finished", "flower_run", "rounds", "classes", "input", "preparation")


@dataclass(frozen=True)
class RunSummary:
    """A federated run as ``summary.json`` gives it: settings, sites, every round and the result.

    Attributes
    ----------
    name : str
        The run's folder name in ``$FESF_HOME/runs`` (JSON key ``run``): its ``run-name``,
        else Flower's run id of the run that started it.
    status : str
        One of :data:`RUN_STATUSES`.
    config : Mapping
        Every run setting, as the run began (``site.`` keys included).
    error : str or None
        Why a failed run failed, in one line; None otherwise.
    sites : Mapping
        Each prepared site's :class:`SiteDetails`, by name.
    history : tuple of RoundMetrics
        Every stored round, in order.
    final : FinalMetrics or None
        The result, once the run has finished.
    started, finished : str or None
        ISO 8601 times (UTC); None until the run has them.
    flower_run : str or None
        Flower's run id of the latest attempt (a resumed run gets a new one).
    rounds : int or None
        The rounds the run is to reach (a resumed run may add rounds).
    classes : tuple of str or None
        The class names the sites agreed on, once they have prepared.
    input : ModelInput or None
        The model's input, once the sites have prepared.
    preparation : tuple of SiteProgress or None
        Each site's latest preparation stage, once preparation began.

    The optional values are left out of the JSON until the run has them, as they always were.
    """

    name: str
    status: str
    config: Mapping[str, ConfigValue]
    error: str | None = None
    sites: Mapping[str, SiteDetails] = field(default_factory=dict)
    history: tuple[RoundMetrics, ...] = ()
    final: FinalMetrics | None = None
    started: str | None = None
    finished: str | None = None
    flower_run: str | None = None
    rounds: int | None = None
    classes: tuple[str, ...] | None = None
    input: ModelInput | None = None
    preparation: tuple[SiteProgress, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The summary as ``summary.json`` holds it."""
        optional: dict[str, Any] = {
            "started": self.started,
            "finished": self.finished,
            "flower_run": self.flower_run,
            "rounds": self.rounds,
            "classes": None if self.classes is None else list(self.classes),
            "input": None if self.input is None else self.input.to_json(),
            "preparation": None if self.preparation is None else [record.to_json() for record in self.preparation],
        }
        return {
            "run": self.name,
            "status": self.status,
            "config": dict(self.config),
            "error": self.error,
            "sites": {name: site.to_json() for name, site in self.sites.items()},
            "history": [entry.to_json() for entry in self.history],
            "final": None if self.final is None else self.final.to_json(),
            **{key: value for key, value in optional.items() if value is not None},
        }

    @classmethod
    def from_json(cls, data: Any) -> "RunSummary":
        """Rebuild a summary from :meth:`to_json`'s dict, checking every part.

        Raises
        ------
        ValueError
            Naming the part of ``data`` that is malformed, e.g. ``history[1].evaluate.site-2.f1:
            expected a number, got 'x'``.
        """
        entry = _object(
            data,
            "summary",
            required=("run", "status", "config", "sites", "history", "final"),
            optional=("error", *_OPTIONAL_KEYS),
        )
        status = _string(entry["status"], "status")
        if status not in RUN_STATUSES:
            _fail("status", f"one of {', '.join(RUN_STATUSES)}", status)
        config = _object(entry["config"], "config")
        for key, value in config.items():
            if not isinstance(value, ConfigValue):
                _fail(f"config.{key}", "a string, number or boolean", value)
        history = entry["history"]
        if not isinstance(history, list | tuple):
            _fail("history", "a list of rounds", history)
        preparation = entry.get("preparation")
        if preparation is not None and not isinstance(preparation, list | tuple):
            _fail("preparation", "a list of progress records", preparation)
        return cls(
            name=_string(entry["run"], "run"),
            status=status,
            config=config,
            error=_optional_string(entry.get("error"), "error"),
            sites={
                name: SiteDetails.from_json(site, f"sites.{name}")
                for name, site in _object(entry["sites"], "sites").items()
            },
            history=tuple(RoundMetrics.from_json(round_, f"history[{index}]") for index, round_ in enumerate(history)),
            final=None if entry["final"] is None else FinalMetrics.from_json(entry["final"]),
            started=_optional_string(entry.get("started"), "started"),
            finished=_optional_string(entry.get("finished"), "finished"),
            flower_run=_optional_string(entry.get("flower_run"), "flower_run"),
            rounds=None if entry.get("rounds") is None else _integer(entry["rounds"], "rounds"),
            classes=None if entry.get("classes") is None else _strings(entry["classes"], "classes"),
            input=None if entry.get("input") is None else ModelInput.from_json(entry["input"]),
            preparation=None if preparation is None else tuple(_progress(preparation)),
        )

    @classmethod
    def read(cls, path: Path) -> "RunSummary":
        """Read and check a run's ``summary.json``.

        Parameters
        ----------
        path : Path
            The file, ``$FESF_HOME/runs/<run>/summary.json``.

        Raises
        ------
        FesfError
            One line naming the file: it is missing, unreadable, not JSON, or not a run summary
            (and which part of it is malformed).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FesfError(
                f"{path}: not found; a run writes its summary when it starts (is FESF_HOME the run's?)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise FesfError(f"{path}: cannot be read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FesfError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); not a run summary") from None
        try:
            return cls.from_json(data)
        except ValueError as exc:
            raise FesfError(f"{path}: not a run summary: {exc}") from None


def _progress(records: list[Any] | tuple[Any, ...]) -> list[SiteProgress]:
    progress = []
    for index, record in enumerate(records):
        try:
            progress.append(SiteProgress.from_json(_object(record, f"preparation[{index}]")))
        except ValueError as exc:
            raise ValueError(f"preparation[{index}]: {exc}") from None
    return progress
