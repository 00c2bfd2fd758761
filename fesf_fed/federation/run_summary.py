"""A federated run's summary, ``$FESF_HOME/runs/<run>/summary.json``, as typed objects.

The federation rewrites the summary from its run store every round (see
``server/run_store.py``); people, scripts and ``fesf-server run`` read it. Its JSON
keys are those the file has always had: the run-level values the store keeps (status,
settings, times, classes, ...), ``sites``, ``history`` (one entry per round: phase,
scope, metric) and ``final`` (the figures of the round with the best validation macro-F1,
whose model is the run's result, once the run has finished).
The parts are pydantic models: every ``from_json`` raises pydantic's ``ValidationError``
(a ``ValueError``) and :meth:`RunSummary.read` says in one line which field is wrong.

This module does not import Flower: scripts read summaries without it.
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fesf_fed.errors import FesfError
from fesf_fed.progress import SiteProgress

#: The file name of a run's summary in its folder.
SUMMARY_FILE = "summary.json"
#: The scope of a metric that describes the whole federation rather than one site.
GLOBAL = "global"
#: What a round's metrics are stored under: training, federated evaluation (the sites' test images),
#: validation (the sites' validation images, which pick the run's model), central evaluation, round time.
PHASES: tuple[str, ...] = ("train", "evaluate", "validation", "central", "timing")
#: The phases whose confusion matrices the final metrics keep: the sites' summed one and the central one.
ConfusionPhase = Literal["evaluate", "central"]
CONFUSION_PHASES: tuple[str, ...] = get_args(ConfusionPhase)
#: What a run can be doing; ``failed`` comes with an ``error``; ``degraded``: it finished, but some round
#: went without a site it had sampled (``absences`` says which and why).
RunStatus = Literal["preparing", "running", "finished", "degraded", "stopped", "failed"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
#: The figures of :meth:`FinalMetrics.headline`, by JSON key, with their names.
_HEADLINE = {"accuracy": "accuracy", "balanced-accuracy": "balanced accuracy", "f1": "macro-F1", "auroc": "AUROC"}
#: The federation's figures that the final metrics give on their own, by JSON key.
FINAL_FIGURES: tuple[str, ...] = ("accuracy", "balanced-accuracy", "precision", "recall", "f1", "auroc", "loss")


def _number(value: Any) -> int | float:
    # Not pydantic's float: it would turn a count written as 12 into 12.0, and accept "12" and true.
    if type(value) not in (int, float):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


def _square(rows: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    if any(len(row) != len(rows) for row in rows):
        raise ValueError("a confusion matrix has as many columns as rows")
    return rows


def _progress(record: Any) -> SiteProgress:
    return record if isinstance(record, SiteProgress) else SiteProgress.from_json(record)


# The ``exclude_if`` of the keys that the JSON leaves out until the run has a value for them.
def _none(value: Any) -> bool:
    return value is None


def _empty(value: Any) -> bool:
    return not value


#: A figure: a JSON number, an int staying an int as written.
Number = Annotated[int | float, PlainValidator(_number)]
#: Figures by metric name, e.g. ``{"accuracy": 0.9, "num-examples": 12}``.
Metrics = Mapping[str, Number]
#: A confusion matrix: rows are true classes, columns predicted ones.
Matrix = Annotated[tuple[tuple[StrictInt, ...], ...], AfterValidator(_square)]
#: A site's preparation record; :class:`SiteProgress` checks and writes its own JSON.
Progress = Annotated[SiteProgress, PlainValidator(_progress), PlainSerializer(SiteProgress.to_json)]


class _Part(BaseModel):
    """A part of the summary: its JSON keys are its fields' aliases, and no others."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    def to_json(self) -> dict[str, Any]:
        """The part as ``summary.json`` holds it."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Rebuild the part from :meth:`to_json`'s dict; a ``ValidationError`` names the field at fault."""
        return cls.model_validate(data)


class _FiguresBeside(_Part):
    """A part whose JSON holds its ``figures`` beside its other keys, e.g. ``{"f1": 0.8, "one_class": false}``."""

    @model_validator(mode="before")
    @classmethod
    def _gather_figures(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "figures" in data:  # not an object (pydantic says so), or built in Python
            return data
        keys = {field.alias or name for name, field in cls.model_fields.items()}
        figures = {key: value for key, value in data.items() if key not in keys}
        return {**{key: data[key] for key in keys & data.keys()}, "figures": figures}

    @model_serializer(mode="wrap")
    def _spread_figures(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {**data.pop("figures"), **data}


class RoundMetrics(_Part):
    """One round's metrics, by phase and scope, as the run store keeps them.

    Attributes
    ----------
    round : int
        The server round, from 1.
    train, evaluate, validation, central, timing : Mapping
        Each phase's figures by scope (:data:`GLOBAL` or a site name), then by metric
        name, e.g. ``evaluate["site-1"]["f1"]``; empty (and left out of the JSON) when the
        round has none of that phase. ``validation`` holds accuracy, balanced accuracy, F1 and
        examples of the sites' validation images (global: pooled over the sites); ``central``
        and ``timing`` (``seconds``) have the global scope only.
    """

    round: StrictInt
    train: Mapping[str, Metrics] = Field(default_factory=dict, exclude_if=_empty)
    evaluate: Mapping[str, Metrics] = Field(default_factory=dict, exclude_if=_empty)
    validation: Mapping[str, Metrics] = Field(default_factory=dict, exclude_if=_empty)
    central: Mapping[str, Metrics] = Field(default_factory=dict, exclude_if=_empty)
    timing: Mapping[str, Metrics] = Field(default_factory=dict, exclude_if=_empty)

    def figures(self, phase: str, scope: str = GLOBAL) -> Metrics:
        """The figures of one phase and scope (empty when the round has none)."""
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: choose from {', '.join(PHASES)}")
        by_scope: Mapping[str, Metrics] = getattr(self, phase)
        return by_scope.get(scope, {})


class CentralMetrics(_FiguresBeside):
    """The selected round's evaluation of the global model on the server's own test set (``central-eval``).

    Its JSON (``final["central"]``) holds the figures with ``one_class`` among them.

    Attributes
    ----------
    figures : Mapping
        Its figures by metric name (accuracy, balanced-accuracy, precision, recall, f1, auroc, loss,
        examples); ``auroc`` is that of the set's images pooled, absent when they hold one class.
    one_class : bool
        Whether the model answered one class for every image of the set.
    """

    figures: Metrics
    # None only in summaries written before the one-class flag existed.
    one_class: StrictBool | None = Field(None, exclude_if=_none)


def selected_round(rounds: Sequence[RoundMetrics]) -> int | None:
    """The round whose global model is the run's result: the best pooled validation macro-F1, else the last.

    The earliest round wins a tie. When no round has validation figures (no site holds
    validation images), the last round. None when there is no round.
    """
    validated = [
        (entry.figures("validation")["f1"], -entry.round) for entry in rounds if "f1" in entry.figures("validation")
    ]
    if validated:
        return -max(validated)[1]
    return rounds[-1].round if rounds else None


class FinalMetrics(_Part):
    """The evaluation of the run's resulting global model, that of :func:`selected_round` (``final`` in the summary).

    Attributes
    ----------
    round : int or None
        The round they are from, the one with the best validation macro-F1 (the last one when
        no site validates); None when the run stored no round.
    validation_f1 : float or None
        That round's pooled validation macro-F1 (JSON key ``validation-f1``); None, and left out
        of the JSON, when no site holds validation images.
    accuracy, balanced_accuracy, precision, recall, f1, auroc, loss : float or None
        The federated evaluation's global figures (JSON keys :data:`FINAL_FIGURES`); precision,
        recall and F1 are the sites' macro figures averaged by their example counts, balanced
        accuracy is that of the sites' summed confusion matrix. ``auroc`` (macro one-vs-rest)
        is the sites' AUROCs averaged by their example counts, over the sites that have one (a
        test split of one class has none); it does not pool. None when the round has none;
        ``auroc`` is then left out of the JSON, and a summary written before AUROC was
        reported reads with None.
    sites : Mapping
        Each site's own evaluation figures, by site name.
    central : CentralMetrics or None
        The evaluation on the server's test set, if the run has one (else left out of the JSON).
    confusion : Mapping
        That round's confusion matrices by phase: ``evaluate`` (summed over the sites) and
        ``central``, where the run has them (left out of the JSON when it has none).
    one_class : bool
        Whether the model answered one class for every site test image (by the summed matrix):
        it has not learned, whatever its accuracy.
    """

    round: StrictInt | None
    validation_f1: Number | None = Field(None, alias="validation-f1", exclude_if=_none)
    accuracy: Number | None
    # None in summaries written before balanced accuracy was reported, as for a run without evaluation.
    balanced_accuracy: Number | None = Field(None, alias="balanced-accuracy")
    precision: Number | None
    recall: Number | None
    f1: Number | None
    auroc: Number | None = Field(None, exclude_if=_none)
    loss: Number | None
    sites: Mapping[str, Metrics]
    central: CentralMetrics | None = Field(None, exclude_if=_none)
    confusion: Mapping[ConfusionPhase, Matrix] = Field(default_factory=dict, exclude_if=_empty)
    # None only in summaries written before the one-class flag existed.
    one_class: StrictBool | None = Field(None, exclude_if=_none)

    def headline(self) -> str:
        """The test figures in one line, as logs and commands print them: ``accuracy 0.912  balanced accuracy ...``."""
        return "  ".join(
            f"{label} {'–' if (value := self.figure(key)) is None else f'{value:.3f}'}"
            for key, label in _HEADLINE.items()
        )

    def figure(self, key: str) -> float | None:
        """A global figure by its JSON key, e.g. ``figure("balanced-accuracy")``."""
        if key not in FINAL_FIGURES:
            raise ValueError(f"final figure {key!r}: choose from {', '.join(FINAL_FIGURES)}")
        value: float | None = getattr(self, key.replace("-", "_"))
        return value


class Absence(_Part):
    """A site that a round sampled and that sent no usable reply (an entry of ``absences`` in the summary).

    Attributes
    ----------
    round : int
        The server round.
    phase : str
        ``train`` or ``evaluate``.
    site : str
        The site's name.
    reason : str
        Why, in one line: Flower's error (its SuperNode is offline, its ClientApp failed) or no reply in time.
    """

    round: StrictInt
    phase: Literal["train", "evaluate"]
    site: str
    reason: str


class SiteDetails(_FiguresBeside):
    """What a site reported when it prepared its data (``sites`` in the summary).

    Its JSON holds the figures beside ``classes``, ``channels``, ``image-size`` and ``host-bank``.

    Attributes
    ----------
    classes : tuple of str
        Its class names, in label order.
    channels, image_size : int
        Its images' channels and size in pixels (JSON key ``image-size``).
    host_bank : str or None
        Where its surrogates' hosts came from: source, count, fingerprint (JSON key
        ``host-bank``; empty in plaintext mode, None in runs from before it was reported).
    figures : Mapping
        Its image counts (``train-examples``, ``test-examples``) and surrogate quality
        (``ssim-...``, ``psnr-...``), by name.
    """

    classes: tuple[str, ...]
    channels: StrictInt
    image_size: StrictInt = Field(alias="image-size")
    host_bank: str | None = Field(None, alias="host-bank")
    figures: Metrics


class ModelInput(_Part):
    """The images the run's model takes (``input`` in the summary): what the diagnosis service builds it for.

    Attributes
    ----------
    channels, image_size : int
        The images' channels and size in pixels (JSON key ``image-size``).
    """

    channels: StrictInt
    image_size: StrictInt = Field(alias="image-size")


class RunSummary(_Part):
    """A federated run as ``summary.json`` gives it: settings, sites, every round and the result.

    Attributes
    ----------
    name : str
        The run's folder name in ``$FESF_HOME/runs`` (JSON key ``run``): its ``run-name``,
        else Flower's run id of the run that started it.
    status : str
        One of :data:`RUN_STATUSES`.
    config : Mapping
        Every run setting (``site.`` keys included): as the run began, with those a resume may
        change (``num-server-rounds``, ``round-timeout``...) as the latest attempt was given them.
    error : str or None
        Why a failed run failed, in one line; None otherwise.
    sites : Mapping
        Each prepared site's :class:`SiteDetails`, by name.
    history : tuple of RoundMetrics
        Every stored round, in order.
    absences : tuple of Absence
        The sites missing from rounds they were sampled for (left out of the JSON when none was).
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
    split_version : int or None
        The version of the sites' split (``fesf_fed.data.SPLIT_VERSION``) the run began with; a
        resumed run must have the same. None in runs started before it was stored.

    The values from ``started`` on are left out of the JSON until the run has them, as they always were.
    """

    name: str = Field(alias="run")
    status: RunStatus
    config: Mapping[str, JsonValue]
    error: str | None = None
    sites: Mapping[str, SiteDetails]
    history: tuple[RoundMetrics, ...]
    absences: tuple[Absence, ...] = Field((), exclude_if=_empty)
    final: FinalMetrics | None
    started: str | None = Field(None, exclude_if=_none)
    finished: str | None = Field(None, exclude_if=_none)
    flower_run: str | None = Field(None, exclude_if=_none)
    rounds: StrictInt | None = Field(None, exclude_if=_none)
    classes: tuple[str, ...] | None = Field(None, exclude_if=_none)
    input: ModelInput | None = Field(None, exclude_if=_none)
    preparation: tuple[Progress, ...] | None = Field(None, exclude_if=_none)
    split_version: StrictInt | None = Field(None, exclude_if=_none)

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
            (and the first field that is wrong, e.g. ``history.1.evaluate.site-2.f1: Input should
            be a valid number``).
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
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "summary"
            raise FesfError(f"{path}: not a run summary: {where}: {first['msg']}") from None
