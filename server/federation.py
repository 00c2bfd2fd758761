"""The federated training loop: roll call, preparation, rounds with checkpoints, summary.

It follows :meth:`flwr.serverapp.strategy.Strategy.start` round for round (train,
aggregate, federated evaluation, central evaluation), adding what a hospital run
needs on top: per-site metrics, a checkpoint after every round and resuming from it.

Why not call ``Strategy.start`` itself (Flower 1.42): it always begins at round 1 (a
resumed run must begin after its checkpoint, with the strategy's optimiser state
restored first); it keeps the sites' replies to itself, handing back only aggregated
metrics, while the run store needs each site's figures and confusion matrix every
round; and its only per-round hook, ``evaluate_fn``, sees the global arrays but not the
round's replies, so a checkpoint and the round's metrics could not be written together.
The strategies' own ``configure_*`` and ``aggregate_*`` methods do the work, unchanged;
this loop is the one copy of the sequence, and the place to check on a Flower upgrade.
"""

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fesf_fed import dp_sgd
from fesf_fed.config import DataConfig, load_config
from fesf_fed.data import SPLIT_VERSION, split_key
from fesf_fed.device import select_device
from fesf_fed.errors import ConfigError, FesfError
from fesf_fed.federation import protocol
from fesf_fed.federation.protocol import (
    AUROC,
    DP_SGD_EPSILON,
    METRICS,
    NUM_EXAMPLES,
    VAL_CONFUSION,
    VAL_EXAMPLES,
    confusion_of,
    data_of,
    metrics_of,
    site_of,
)
from fesf_fed.federation.run_summary import (
    SUMMARY_FILE,
    CentralMetrics,
    FinalMetrics,
    ModelInput,
    RunSummary,
    selected_round,
)
from fesf_fed.federation.settings import RunSettings
from fesf_fed.models import build_model
from fesf_fed.progress import SiteProgress, Stage, read_progress, remove_progress
from fesf_fed.task import Evaluation, classification_figures, evaluate, one_class_answer
from fesf_fed.training_data import SiteData, load_site_data

from .liveness import Heartbeat, absence_note, resume_hint
from .participation import PhaseReplies, TooFewSites, gather
from .run_store import GLOBAL, RunFolder, StoredRun
from .sites import SiteGrid, check_minimums, discover_sites
from .strategies import build_strategy, restore_strategy_state, strategy_state

#: Settings a resumed run must share with the run it continues (rounds may be added).
_FIXED_ON_RESUME = (
    "mode",
    "model",
    "strategy",
    "site-config",
    "sites-file",
    "num-sites",
    "partition",
    "dirichlet-alpha",
    "partition-seed",
    # The seed of the initial model and of every round's local training.
    "seed",
    # The training recipe: a resumed run trains on as it began. (Added rounds stretch a cosine
    # schedule over the new total, so the rate rises again: docs/federation.md says so.)
    "learning-rate",
    "batch-size",
    "local-epochs",
    "class-weighting",
    "augment",
    "optimiser",
    "weight-decay",
    "lr-schedule",
    "warmup-fraction",
    "clip-grad-norm",
    # Differential privacy: a resumed run protects its rounds as it began (and its sites' epsilons add up).
    "dp-sgd-noise-multiplier",
    "dp-sgd-max-grad-norm",
    "dp-sgd-delta",
    "dp-aggregate",
    "dp-aggregate-noise-multiplier",
    "dp-aggregate-clipping-norm",
)


#: Settings that only shape a run's start (its name, initial weights): a resume neither needs nor records them.
_START_ONLY = ("run-name", "resume", "pretrained-weights")


def _errors(replies: list[Message]) -> list[str]:
    return [f"node {reply.metadata.src_node_id}: {reply.error.reason}" for reply in replies if reply.has_error()]


#: Seconds between two pulls of the sites' prepare replies (and reads of their progress files).
_PULL_SECONDS = 1.0
#: Seconds between two log reports of the sites still preparing.
_LOG_SECONDS = 10.0


def _await_preparation(grid: SiteGrid, run: RunFolder, run_id: str, timeout: float) -> list[Message]:
    """Send every site its prepare message; collect the replies within ``timeout`` s, in site order.

    Meanwhile the sites' progress, from the files that simulated sites write (see
    :mod:`fesf_fed.progress`), goes to the run store as it changes and to the log every
    ``_LOG_SECONDS``, one line per site still preparing.
    """
    began = time.monotonic()
    deadline = began + timeout
    sent = grid.push_messages(
        Message(RecordDict({protocol.CONFIG: ConfigRecord()}), dst_node_id=site_id, message_type=protocol.PREPARE)
        for site_id in grid.get_node_ids()
    )
    sites = {site_id: grid.sites[site_id] for site_id in sent.values()}
    # A deployed site writes no file here: its progress shows on its own console.
    latest = {
        site.name: SiteProgress.at(site.name, Stage.WAITING if site.simulated_index is not None else Stage.REMOTE)
        for site in sites.values()
    }
    pending = dict(sent)
    replies: list[tuple[int, Message]] = []
    stored: list[SiteProgress] = []
    reported = began
    try:
        while pending and time.monotonic() < deadline:
            for reply in grid.pull_messages(list(pending)):
                site = sites[pending.pop(reply.metadata.reply_to_message_id)]
                replies.append((site.site_id, reply))
                if not reply.has_error():
                    if latest[site.name].stage not in (Stage.READY, Stage.CACHED):
                        latest[site.name] = SiteProgress.at(site.name, Stage.READY)
                    log(INFO, "%s: %s after %.0f s", site.name, latest[site.name].describe(), time.monotonic() - began)
            preparing = {sites[site_id].name for site_id in pending.values()}
            latest.update({name: record for name, record in read_progress(run_id).items() if name in preparing})
            if stored != (records := list(latest.values())):
                run.set_preparation(records)
                stored = records
            if pending and time.monotonic() - reported >= _LOG_SECONDS:
                for name in sorted(preparing):
                    log(INFO, "%s: %s", name, latest[name].describe(now=time.time()))
                reported = time.monotonic()
            if pending:
                time.sleep(min(_PULL_SECONDS, max(0.0, deadline - time.monotonic())))
    finally:
        remove_progress(run_id)
    return [reply for _, reply in sorted(replies, key=lambda pair: pair[0])]


def _prepare_sites(grid: SiteGrid, run: RunFolder, run_id: str, timeout: float) -> tuple[list[str], int, int]:
    """Have every site build its surrogates; return the classes, channels and image size they agree on.

    ``run_id`` is Flower's run id, which names the folder of the simulated sites' progress files.
    """
    replies = _await_preparation(grid, run, run_id, timeout)
    if failures := _errors(replies):
        raise FesfError("sites could not prepare their data: " + "; ".join(failures))
    if missing := {site.name for site in grid.sites.values()} - {site_of(reply.content) for reply in replies}:
        names = ", ".join(sorted(missing))
        raise FesfError(
            f"sites {names} did not finish preparing their data within round-timeout ({timeout:.0f} s); "
            "raise round-timeout, or let those sites build their surrogates (fesf-client does) before the run"
        )
    described = {site_of(reply.content): data_of(reply.content) for reply in replies}
    for reply in replies:
        data = described[site_of(reply.content)]
        run.set_site(site_of(reply.content), {**data.to_config(), **metrics_of(reply.content)})
    # Host banks may differ (a site's own bank, phantoms seeded by its key); what the model takes may not.
    if len({(d.classes, d.channels, d.image_size) for d in described.values()}) > 1:
        listing = ", ".join(
            f"{name}: {list(d.classes)} x{d.channels}ch {d.image_size}px" for name, d in described.items()
        )
        raise FesfError(f"sites disagree on classes, channels or image size ({listing}): align their data configs")
    agreed = next(iter(described.values()))
    return list(agreed.classes), agreed.channels, agreed.image_size


def _gather(
    grid: SiteGrid, messages: Iterable[Message], settings: RunSettings, phase: str, server_round: int
) -> PhaseReplies:
    """One phase's replies by the participation policy (:mod:`.participation`); a warning names the missing sites."""
    setting = "min-train-nodes" if phase == "train" else "min-evaluate-nodes"
    replies = gather(
        grid,
        list(messages),
        minimum=getattr(settings, setting.replace("-", "_")),
        timeout=settings.round_timeout,
        phase=phase,
        server_round=server_round,
        setting=setting,
    )
    for site, reason in replies.missing.items():
        log(
            WARNING,
            "Round %d: site %s sent no %s reply (%s); the round goes on without it",
            server_round,
            site,
            phase,
            reason,
        )
    return replies


def _scalars(metrics: MetricRecord | None) -> dict[str, float]:
    """A strategy's aggregated metrics (None: there were none); Flower's strategies average scalars."""
    scalars: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        if isinstance(value, list):
            raise FesfError(f"aggregated metric {name!r} is a list, not a number")
        scalars[name] = value
    return scalars


def _aggregable(replies: list[Message]) -> list[Message]:
    """The evaluate replies as a strategy may aggregate them: ``auroc`` left out unless every site sent one.

    Flower's strategies refuse (``InconsistentMessageReplies``) metric records whose keys differ,
    and a site whose test split holds one class sends no AUROC. Such a round's strategy sees
    copies without it; the sites' own AUROCs are stored from the replies themselves, and the
    federation's by :func:`_record_auroc`.
    """

    def metrics(reply: Message) -> MetricRecord:
        return reply.content.metric_records.get(METRICS, MetricRecord())

    sent = [AUROC in metrics(reply) for reply in replies]
    if all(sent) or not any(sent):
        return replies
    aggregable = []
    for reply in replies:
        if AUROC in metrics(reply):
            kept = MetricRecord({key: value for key, value in metrics(reply).items() if key != AUROC})
            reply = copy.copy(reply)  # a shallow copy: the original keeps its record
            reply.content = RecordDict({**reply.content, METRICS: kept})
        aggregable.append(reply)
    return aggregable


def _record_sites(run: RunFolder, server_round: int, phase: str, replies: list[Message]) -> None:
    """Store each replying site's figures of ``phase``; the replies are the good ones (:func:`_gather`)."""
    for reply in replies:
        run.record(server_round, phase, site_of(reply.content), metrics_of(reply.content))


def _record_confusion(run: RunFolder, server_round: int, replies: list[Message], num_classes: int) -> float | None:
    """Store each site's evaluation confusion matrix and their sum, the federation's (as ``GLOBAL``).

    The sum also gives the federation's balanced accuracy, stored as the global ``balanced-accuracy``
    and returned (None when no site sent a confusion matrix). Flower's aggregation averages the
    sites' balanced accuracies by their example counts, which is not the balanced accuracy of all
    their test images; stored after the aggregated metrics, the pooled figure replaces it.
    """
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for reply in replies:
        if (matrix := confusion_of(reply.content, num_classes)) is None:
            continue
        run.record_confusion(server_round, "evaluate", site_of(reply.content), matrix.tolist())
        total += matrix
    if not total.any():
        return None
    run.record_confusion(server_round, "evaluate", GLOBAL, total.tolist())
    balanced_accuracy = classification_figures(total)["balanced_accuracy"]
    run.record(server_round, "evaluate", GLOBAL, {"balanced-accuracy": balanced_accuracy})
    return balanced_accuracy


def _record_auroc(run: RunFolder, server_round: int, replies: list[Message]) -> float | None:
    """Store the federation's AUROC, the global ``auroc``: the sites' AUROCs averaged by their test images.

    It is Flower's example-weighted mean (what its strategies make of every figure), taken over
    the sites that sent an AUROC: one whose test split holds a single class has none. It is not
    the AUROC of all the sites' test images pooled (the probabilities stay at the sites; only
    ``fesf-reproduce``'s central cells and ``central-eval`` have that). Returns it, or None when
    no site sent one (and then nothing is stored).
    """
    weighted = [
        (float(metrics[NUM_EXAMPLES]), float(metrics[AUROC]))
        for reply in replies
        if AUROC in (metrics := metrics_of(reply.content))
    ]
    examples = sum(weight for weight, _ in weighted)
    if not examples:
        return None
    auroc = sum(weight * value for weight, value in weighted) / examples
    run.record(server_round, "evaluate", GLOBAL, {AUROC: auroc})
    return auroc


def _record_epsilon(run: RunFolder, server_round: int) -> float | None:
    """Store the federation's DP-SGD epsilon, the global ``dp-sgd-epsilon``: the largest any site has reported.

    Each site reports the epsilon of all its rounds so far; the run's guarantee is the weakest
    of them, not Flower's example-weighted mean, which this replaces. A site left out of this
    round counts with its latest. Returns it, or None when no site trains with DP-SGD.
    """
    reported = [
        figures[DP_SGD_EPSILON]
        for entry in run.rounds()
        for scope, figures in entry.train.items()
        if scope != GLOBAL and DP_SGD_EPSILON in figures
    ]
    if not reported:
        return None
    run.record(server_round, "train", GLOBAL, {DP_SGD_EPSILON: max(reported)})
    return max(reported)


def _validation(replies: list[Message], num_classes: int) -> dict[str, np.ndarray]:
    """Each site's confusion matrix on its validation images, by site name (a site without any sends none)."""
    matrices = {}
    for reply in replies:
        if (matrix := confusion_of(reply.content, num_classes, VAL_CONFUSION)) is not None:
            matrices[site_of(reply.content)] = matrix
    return matrices


def _validation_figures(matrix: np.ndarray) -> dict[str, float]:
    """What the store keeps of a validation matrix: accuracy, balanced accuracy, macro-F1 and the image count."""
    figures = classification_figures(matrix)
    return {
        "accuracy": figures["accuracy"],
        "balanced-accuracy": figures["balanced_accuracy"],
        "f1": figures["f1"],
        "examples": int(matrix.sum()),
    }


def _record_validation(
    run: RunFolder, server_round: int, matrices: dict[str, np.ndarray], validating: set[str]
) -> float | None:
    """Store each site's validation figures and matrix, and, when every site in ``validating`` sent one, their sum's.

    The sum (as ``GLOBAL``) is what picks the run's model, so rounds must be compared on the same
    images: a round that misses a validating site (its reply failed, or ``fraction-evaluate`` left it
    out) gets no global figure and cannot be chosen. Returns that round's pooled macro-F1, or None.
    """
    for scope, matrix in matrices.items():
        run.record(server_round, "validation", scope, _validation_figures(matrix))
        run.record_confusion(server_round, "validation", scope, matrix.tolist())
    missing = validating - matrices.keys()
    if missing:
        log(
            WARNING,
            "Round %d: no validation figure from %s: the round cannot be chosen as the run's model",
            server_round,
            ", ".join(sorted(missing)),
        )
    if missing or not matrices:
        return None
    pooled = np.sum(list(matrices.values()), axis=0)
    figures = _validation_figures(pooled)
    run.record(server_round, "validation", GLOBAL, figures)
    run.record_confusion(server_round, "validation", GLOBAL, pooled.tolist())
    return figures["f1"]


class _CentralEvaluation:
    """The server's own test set (``central-eval``), in the run's mode, for evaluating the global model."""

    def __init__(self, settings: RunSettings, site_defaults: dict[str, Any], classes: list[str]) -> None:
        config = load_config(settings.central_eval, run_config=site_defaults, assigned={"site": "central"})
        self.data: SiteData = load_site_data(config, settings.mode)
        if self.data.classes != classes:
            raise ConfigError(f"run config central-eval: classes {self.data.classes} differ from the sites' {classes}")
        self.device = select_device(config.device)
        self.settings = settings

    def __call__(self, arrays: ArrayRecord) -> Evaluation:
        model = build_model(
            self.settings.model,
            len(self.data.classes),
            self.data.channels,
            image_size=int(self.data.test_images.shape[-1]),
        )
        model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(
            model,
            self.data.test_images,
            self.data.test_labels,
            num_classes=len(self.data.classes),
            batch_size=self.settings.batch_size,
            device=self.device,
        )


#: The site data settings that decide a site's split: a resumed run must keep them, or its sites'
#: training, validation and test parts (and surrogates) change under the checkpoint.
_SPLIT_KEYS = tuple(f"data.{field}" for field in split_key(DataConfig(source="phantom")) if field != "version")


def check_resumable(run: RunFolder | StoredRun, settings: RunSettings, site_defaults: dict[str, Any]) -> None:
    """Refuse to resume a run with settings that would make its checkpoint meaningless.

    Raises
    ------
    ConfigError
        Naming the first setting that differs from the stored run's, or saying that the run's
        sites were split by an older version (no validation part), so it cannot go on.
    """
    info = run.info()
    stored = info.get("config", {})
    if not stored:  # a new run: nothing to keep
        return
    given = settings.model_dump(by_alias=True)
    for key in _FIXED_ON_RESUME:
        if key in stored and stored[key] != given[key]:
            raise ConfigError(
                f"run config {key}: run {run.name} used {stored[key]!r}, not {given[key]!r}; "
                "a resumed run keeps it (only rounds may change)"
            )
    for key in _SPLIT_KEYS:
        if stored.get(f"site.{key}") != site_defaults.get(key):
            raise ConfigError(
                f"run config site.{key}: run {run.name} used {stored.get(f'site.{key}')!r}, not "
                f"{site_defaults.get(key)!r}; a resumed run keeps its sites' split"
            )
    if info.get("split_version") != SPLIT_VERSION:
        raise ConfigError(
            f"run config resume: run {run.name}'s sites were split by an older FESF-Fed (before validation "
            "parts); its checkpoint does not fit their data now: start a new run"
        )


def _start(run: RunFolder, settings: RunSettings, strategy: Any, initial: ArrayRecord) -> tuple[int, ArrayRecord]:
    """The first round to run and the arrays to start it from: the last checkpoint's when resuming."""
    checkpoint = run.latest_checkpoint() if settings.resume else None
    if checkpoint is None:
        return 1, initial
    restore_strategy_state(strategy, checkpoint["strategy"])
    run.drop_rounds_after(checkpoint["round"])
    rounds = run.rounds()
    if rounds and "f1" in rounds[-1].figures("validation") and selected_round(rounds) == checkpoint["round"]:
        # Interrupted after the round's metrics, before best.pt was written: the checkpoint's arrays are the best.
        best = run.best_checkpoint()
        if best is None or best["round"] != checkpoint["round"]:
            run.save_best(checkpoint["round"], checkpoint["arrays"])
    log(INFO, "Resuming run %s after round %d", run.name, checkpoint["round"])
    return checkpoint["round"] + 1, ArrayRecord(checkpoint["arrays"])


def _log_round(
    server_round: int,
    total: int,
    metrics: MetricRecord | None,
    balanced_accuracy: float | None,
    auroc: float | None,
    seconds: float,
) -> None:
    """Log a round's federated evaluation.

    ``balanced_accuracy`` is the pooled one of :func:`_record_confusion`, ``auroc`` the sites'
    example-weighted mean of :func:`_record_auroc`; ``–`` where there is none.
    """
    if metrics is None:
        log(
            INFO,
            "Round %d/%d: no evaluation results (%.1f s)",
            server_round,
            total,
            seconds,
        )
        return
    log(
        INFO,
        "Round %d/%d: accuracy %.3f  balanced accuracy %s  macro-F1 %.3f  AUROC %s  "
        "macro precision %.3f  macro recall %.3f  loss %.4f  (%.1f s)",
        server_round,
        total,
        metrics["accuracy"],
        "–" if balanced_accuracy is None else f"{balanced_accuracy:.3f}",
        metrics["f1"],
        "–" if auroc is None else f"{auroc:.3f}",
        metrics["precision"],
        metrics["recall"],
        metrics["loss"],
        seconds,
    )


#: The test sets a global model is evaluated on, by phase, as a warning names them.
_TEST_SETS = {"evaluate": "site", "central": "central"}


def _final_metrics(run: RunFolder) -> FinalMetrics:
    """The evaluation of the run's resulting model, :func:`selected_round`'s: global, per site, central if any.

    ``one_class`` (of the final metrics for the sites' pooled confusion matrix, of their ``central``
    part for the central one) tells whether the global model answered one class for every image.
    """
    rounds = run.rounds()
    chosen = selected_round(rounds)
    entry = next((entry for entry in rounds if entry.round == chosen), None)
    evaluation = entry.evaluate if entry else {}
    figures = evaluation.get(GLOBAL, {})
    confusion = {
        phase: tuple(tuple(row) for row in found)
        for phase in _TEST_SETS
        if chosen is not None and (found := run.confusion(phase, chosen)) is not None
    }
    one_class = {phase: phase in confusion and one_class_answer(confusion[phase]) is not None for phase in _TEST_SETS}
    central = entry.central.get(GLOBAL) if entry else None
    return FinalMetrics(
        round=chosen,
        validation_f1=entry.figures("validation").get("f1") if entry else None,
        accuracy=figures.get("accuracy"),
        balanced_accuracy=figures.get("balanced-accuracy"),
        precision=figures.get("precision"),
        recall=figures.get("recall"),
        f1=figures.get("f1"),
        auroc=figures.get(AUROC),
        loss=figures.get("loss"),
        sites={scope: metrics for scope, metrics in evaluation.items() if scope != GLOBAL},
        central=None if central is None else CentralMetrics(figures=central, one_class=one_class["central"]),
        confusion=confusion,
        one_class=one_class["evaluate"],
    )


def _log_result(run: RunFolder, final: FinalMetrics) -> None:
    """Say which round's model is the run's result, its test figures, and where model and summary are."""
    if final.validation_f1 is not None:
        chosen = f"round {final.round}'s (best validation macro-F1 {final.validation_f1:.3f})"
    else:
        chosen = f"the last round's ({final.round}; no site holds validation images)"
    log(INFO, "Run %s finished: the model is %s: test %s", run.name, chosen, final.headline())
    log(INFO, "Model: %s; summary: %s", run.model_checkpoint_path(), run.directory / SUMMARY_FILE)


def _warn_if_one_class(final: FinalMetrics, classes: list[str]) -> None:
    """Log a warning for each test set on which the run's model answered one class only: accuracy hides it."""
    for phase, counts in final.confusion.items():
        answer = one_class_answer(counts)
        if answer is not None:
            log(
                WARNING,
                "Warning: the run's global model answers one class (%s) for every %s test image: "
                "it has not learned; see balanced accuracy",
                classes[answer],
                _TEST_SETS[phase],
            )


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its folder in ``$FESF_HOME/runs`` and its summary, as ``summary.json`` holds it."""

    folder: Path
    summary: RunSummary

    @property
    def run_id(self) -> str:
        """The run's id: its folder name (its ``run-name``, else Flower's run id)."""
        return self.folder.name


def run_federation(grid: Grid, settings: RunSettings, site_defaults: dict[str, Any], flower_run: str) -> RunOutcome:
    """Run (or resume) a federation to its last round; return its folder and summary.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The ServerApp's grid.
    settings, site_defaults : RunSettings, dict
        From :func:`fesf_fed.federation.settings.parse_run_settings`.
    flower_run : str
        Flower's run id: the folder name of a new run without ``run-name`` (a resumed run keeps
        its folder) and of the simulated sites' progress files (:func:`fesf_fed.progress.progress_folder`).

    Raises
    ------
    ConfigError
        Before anything else, for a ``resume`` of a missing run or with other settings, or a
        ``run-name`` that a run has already.
    FesfError
        When the sites cannot prepare or a round fails; the summary says so too.
    """
    try:
        run = RunFolder(
            settings.run_folder(flower_run),
            must_exist=bool(settings.resume),
            must_be_new=bool(settings.run_name),
        )
    except ConfigError as exc:
        log(ERROR, "error: %s", exc)
        raise
    try:
        check_resumable(run, settings, site_defaults)
    except ConfigError as exc:
        log(ERROR, "error: %s", exc)
        run.close()
        raise
    try:
        # Stored first, so the dashboard shows the run's settings while its sites prepare.
        if not settings.resume:
            run.set_info(
                config={
                    **settings.model_dump(by_alias=True),
                    **{f"site.{k}": v for k, v in site_defaults.items()},
                },
                started=datetime.now(UTC).isoformat(),
                split_version=SPLIT_VERSION,
            )
        else:
            # What governs the rounds from here (rounds, round-timeout, minimums...) as this attempt was given it;
            # what only shaped the start stays as the run began.
            given = settings.model_dump(by_alias=True)
            run.set_info(config={**run.info()["config"], **{k: v for k, v in given.items() if k not in _START_ONLY}})
        with Heartbeat(run.directory):
            run.set_info(
                status="preparing",
                flower_run=flower_run,
                # A resumed run may add rounds.
                rounds=settings.num_server_rounds,
                # A resumed run that failed before: its error no longer holds.
                error=None,
            )
            if settings.resume:
                run.set_preparation([])  # the stages of the attempt before
            if settings.dp_sgd_noise_multiplier:  # before the sites spend their time preparing
                dp_sgd.check_model(build_model(settings.model, 2), settings.model)
            sites = discover_sites(grid, settings, site_defaults, settings.round_timeout)
            check_minimums(settings, sites)
            strategy = build_strategy(settings, len(sites))
            site_grid = SiteGrid(grid, sites)
            log(INFO, "Sites: %s", ", ".join(site.name for site in sites))
            began = time.perf_counter()
            classes, channels, size = _prepare_sites(site_grid, run, flower_run, settings.round_timeout)
            log(
                INFO,
                "Sites prepared their %s data in %.1f s; classes: %s",
                settings.mode,
                time.perf_counter() - began,
                classes,
            )
            weights = Path(settings.pretrained_weights) if settings.pretrained_weights else None
            # The run's seed fixes the initial weights, so a run can be repeated exactly.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                model = build_model(settings.model, len(classes), channels, weights=weights, image_size=size)
            start, arrays = _start(run, settings, strategy, ArrayRecord(model.state_dict()))
            if not settings.resume:
                run.set_info(classes=classes)
            # The diagnosis service builds the model for this input.
            run.set_info(status="running", input=ModelInput(channels=channels, image_size=size).to_json())
            central = _CentralEvaluation(settings, site_defaults, classes) if settings.central_eval else None
            # The sites whose validation every round's pooled figure must include to count.
            validating = {name for name, details in run.sites().items() if details.get(VAL_EXAMPLES, 0) > 0}
            for server_round in range(start, settings.num_server_rounds + 1):
                began = time.perf_counter()
                train = _gather(
                    site_grid,
                    strategy.configure_train(server_round, arrays, ConfigRecord(), site_grid),
                    settings,
                    "train",
                    server_round,
                )
                train_replies = train.replies
                new_arrays, train_metrics = strategy.aggregate_train(server_round, train_replies)
                if new_arrays is None:
                    raise FesfError(
                        f"round {server_round}: no site was sampled to train (fraction-train, min-train-nodes)"
                    )
                arrays = new_arrays
                evaluation = _gather(
                    site_grid,
                    strategy.configure_evaluate(server_round, arrays, ConfigRecord(), site_grid),
                    settings,
                    "evaluate",
                    server_round,
                )
                evaluate_replies = evaluation.replies
                evaluate_metrics = strategy.aggregate_evaluate(server_round, _aggregable(evaluate_replies))
                central_metrics = central(arrays) if central else None
                seconds = time.perf_counter() - began
                run.save_checkpoint(
                    server_round,
                    {
                        "arrays": arrays.to_torch_state_dict(),
                        "strategy": strategy_state(strategy),
                    },
                    settings.keep_checkpoints,
                )
                run.record_absences(server_round, "train", train.missing)
                run.record_absences(server_round, "evaluate", evaluation.missing)
                _record_sites(run, server_round, "train", train_replies)
                _record_sites(run, server_round, "evaluate", evaluate_replies)
                run.record(server_round, "train", GLOBAL, _scalars(train_metrics))
                run.record(server_round, "evaluate", GLOBAL, _scalars(evaluate_metrics))
                balanced_accuracy = _record_confusion(run, server_round, evaluate_replies, len(classes))
                auroc = _record_auroc(run, server_round, evaluate_replies)
                epsilon = _record_epsilon(run, server_round)
                validation_f1 = _record_validation(
                    run, server_round, _validation(evaluate_replies, len(classes)), validating
                )
                if central_metrics:
                    run.record(server_round, "central", GLOBAL, central_metrics.scalars())
                    run.record_confusion(server_round, "central", GLOBAL, central_metrics.confusion)
                run.record(server_round, "timing", GLOBAL, {"seconds": seconds})
                # After the round's metrics, so that best.pt never holds a round the store lacks
                # (an interruption in between is mended on resume, by _start).
                best = selected_round(run.rounds())
                if validation_f1 is not None and best == server_round:
                    run.save_best(server_round, arrays.to_torch_state_dict())
                run.write_summary(final=None)
                _log_round(
                    server_round, settings.num_server_rounds, evaluate_metrics, balanced_accuracy, auroc, seconds
                )
                if epsilon is not None:
                    log(
                        INFO,
                        "Round %d/%d: DP-SGD epsilon %.2f at delta %g (the sites' largest so far)",
                        server_round,
                        settings.num_server_rounds,
                        epsilon,
                        settings.dp_sgd_delta,
                    )
                if validation_f1 is not None:
                    log(
                        INFO,
                        "Round %d/%d: validation macro-F1 %.3f (best: round %s)",
                        server_round,
                        settings.num_server_rounds,
                        validation_f1,
                        best,
                    )
            final = _final_metrics(run)
            _warn_if_one_class(final, classes)
            # A round that went without a sampled site leaves the run degraded, whatever its figures.
            absences = run.absences()
            status = "degraded" if absences else "finished"
            run.set_info(status=status, finished=datetime.now(UTC).isoformat())
            summary = run.write_summary(final)
            _log_result(run, final)
            if absences:
                log(WARNING, "Run %s is degraded: %s", run.name, absence_note(absences))
            return RunOutcome(run.directory, summary)
    except FesfError as exc:
        # Flower adds a traceback after this line; the line says what to fix.
        error = f"{exc}; {resume_hint(run.name)}" if isinstance(exc, TooFewSites) else str(exc)
        log(ERROR, "error: %s", error)
        run.set_info(status="failed", error=error)
        run.write_summary(final=None)
        raise
    except BaseException:
        run.set_info(status="stopped")
        run.write_summary(final=None)
        raise
    finally:
        run.close()
