"""How far a site's preparation (data, IQEM, conversion, quality) has got, as a typed record.

A surrogate build takes minutes, and in a federation it runs inside a ClientApp whose
console nobody watches. :class:`ProgressMeter` turns the build's stages and loop counts
into :class:`SiteProgress` records for a callback, throttled so that a fast loop costs
nothing. In Flower's simulation the ClientApp writes each record to
``$FESF_HOME/progress/<flower-run-id>/<site>.json`` (:class:`ProgressFile`), where the
ServerApp, on the same machine, reads it (:func:`read_progress`) to log it and show it
on the dashboard.
"""

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fesf_fed.atomic import write_json
from fesf_fed.home import fesf_home

#: Least seconds between two reports of one loop's counts.
REPORT_SECONDS = 2.0


class Stage(StrEnum):
    """Where a site's preparation is."""

    #: The ServerApp has heard nothing from the site yet.
    WAITING = "waiting"
    #: A deployed site: its progress shows on its own console, not here.
    REMOTE = "remote"
    LOADING = "loading"
    IQEM = "iqem"
    CONVERTING = "converting"
    QUALITY = "quality"
    READY = "ready"
    #: Ready at once: the surrogates were already built with these settings.
    CACHED = "cached"


#: How :meth:`SiteProgress.describe` words each stage, and the unit of its counts.
_WORDING: dict[Stage, tuple[str, str]] = {
    Stage.WAITING: ("waiting", ""),
    Stage.REMOTE: ("preparing (progress on the site's console)", ""),
    Stage.LOADING: ("loading data", ""),
    Stage.IQEM: ("IQEM step", "step"),
    Stage.CONVERTING: ("converting image", "img"),
    Stage.QUALITY: ("measuring quality on image", "img"),
    Stage.READY: ("ready", ""),
    Stage.CACHED: ("ready (surrogates from cache)", ""),
}


@dataclass(frozen=True)
class SiteProgress:
    """One site's preparation at one moment.

    Attributes
    ----------
    site : str
        The site's name.
    stage : Stage
        What it is doing.
    since : float
        When the stage began (Unix time, seconds).
    updated : float
        When this record was made (Unix time, seconds).
    done, total : int or None
        Steps or images done, of how many, in stages that count them.
    rate : float or None
        Steps or images per second in this stage, once measured.
    eta : float or None
        Seconds left in this stage at that rate.
    """

    site: str
    stage: Stage
    since: float
    updated: float
    done: int | None = None
    total: int | None = None
    rate: float | None = None
    eta: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the stage as its string)."""
        return {**asdict(self), "stage": self.stage.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SiteProgress":
        """Rebuild a record from :meth:`to_json`'s dict.

        Raises
        ------
        ValueError
            If ``data`` is not such a dict (a field missing, unknown or of the wrong type).
        """
        try:
            record = cls(**{**data, "stage": Stage(data["stage"])})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a progress record: {exc}") from None
        numbers = (record.since, record.updated, record.done, record.total, record.rate, record.eta)
        if not isinstance(record.site, str) or not all(
            value is None or (isinstance(value, int | float) and math.isfinite(value)) for value in numbers
        ):
            raise ValueError(f"not a progress record: {dict(data)!r}")
        return record

    @classmethod
    def at(cls, site: str, stage: Stage) -> "SiteProgress":
        """A record of ``stage`` without counts, made now."""
        now = time.time()
        return cls(site, stage, since=now, updated=now)

    def describe(self, now: float | None = None) -> str:
        """The record in words, e.g. ``IQEM step 40/100 (3.1 step/s, ETA 19 s)``.

        Given the time ``now`` (Unix seconds), a stage without a measured rate, such as
        loading, also says how long it has lasted: ``loading data (35 s so far)``.
        """
        label, unit = _WORDING[self.stage]
        text = label if self.total is None else f"{label} {self.done}/{self.total}"
        if self.rate is not None:
            text += f" ({self.rate:.3g} {unit}/s" + ("" if self.eta is None else f", ETA {self.eta:.0f} s") + ")"
        elif now is not None and self.stage not in (Stage.READY, Stage.CACHED):
            text += f" ({max(now - self.since, 0):.0f} s so far)"
        return text


#: What hears of a site's progress.
ProgressCallback = Callable[[SiteProgress], None]


class ProgressMeter:
    """Reports a site's stages to a callback at once, and a loop's counts at most every ``interval`` s.

    Every long loop of a build calls :meth:`advance` beside its tqdm bar's ``update``;
    without a callback the meter does nothing.

    Parameters
    ----------
    report : callable or None
        Called with each :class:`SiteProgress`.
    site : str
        The site the records name.
    interval : float
        Least seconds between two reports of counts within a stage.
    """

    def __init__(self, report: ProgressCallback | None, site: str, interval: float = REPORT_SECONDS) -> None:
        self.report, self.site, self.interval = report, site, interval
        self._stage = Stage.WAITING
        self._done, self._first = 0, 0
        self._total: int | None = None
        self._began = self._last = time.monotonic()
        self._since = time.time()

    def stage(self, stage: Stage, total: int | None = None, done: int = 0) -> None:
        """Enter ``stage``, with ``total`` steps of which ``done`` are done already (a resumed loop)."""
        self._stage, self._total, self._done, self._first = stage, total, done, done
        self._began = self._last = time.monotonic()
        self._since = time.time()
        self._send()

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more steps; report them if ``interval`` passed since the last report."""
        self._done += count
        now = time.monotonic()
        if self.report is not None and now - self._last >= self.interval:
            self._last = now
            self._send()

    def _send(self) -> None:
        if self.report is None:
            return
        counted = self._total is not None
        # Steps of a resumed loop that were done before it resumed do not count towards its speed.
        elapsed, steps = time.monotonic() - self._began, self._done - self._first
        rate = steps / elapsed if counted and steps > 0 and elapsed > 0 else None
        eta = max(self._total - self._done, 0) / rate if rate and self._total is not None else None
        self.report(
            SiteProgress(
                self.site,
                self._stage,
                since=self._since,
                updated=time.time(),
                done=self._done if counted else None,
                total=self._total,
                rate=rate,
                eta=eta,
            )
        )


def progress_folder(run_id: int | str) -> Path:
    """Where the sites simulated in Flower run ``run_id`` leave their progress: ``$FESF_HOME/progress/<run_id>``."""
    return fesf_home() / "progress" / str(run_id)


@dataclass(frozen=True)
class ProgressFile:
    """A :data:`ProgressCallback` that keeps ``<site>.json`` in :func:`progress_folder` at the latest record.

    Each record replaces the file atomically, so a reader never sees half of one.
    """

    run_id: int
    site: str

    @property
    def path(self) -> Path:
        return progress_folder(self.run_id) / f"{self.site}.json"

    def __call__(self, record: SiteProgress) -> None:
        try:
            write_json(self.path, record.to_json())
        except OSError:
            # Progress is advisory: a full disk, or a folder the ServerApp removed after its
            # round-timeout, must not fail the site's surrogate build.
            pass


def read_progress(run_id: int | str) -> dict[str, SiteProgress]:
    """The latest record of each site in :func:`progress_folder`, by site; unreadable files are left out."""
    records = {}
    for path in sorted(progress_folder(run_id).glob("*.json")):
        try:
            record = SiteProgress.from_json(json.loads(path.read_text()))
        except (OSError, ValueError):  # removed meanwhile, or not ours
            continue
        records[record.site] = record
    return records


def remove_progress(run_id: int | str) -> None:
    """Remove the run's progress folder, once its sites are prepared (or failed to)."""
    shutil.rmtree(progress_folder(run_id), ignore_errors=True)
