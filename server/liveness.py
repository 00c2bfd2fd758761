"""Whether a run's server is still alive, and the one line that says how a run stands.

A server that is killed outright (SIGKILL, the OOM killer, a lost machine) writes no final
status: its run store keeps saying ``running``. So while a run prepares or runs, the
ServerApp touches ``heartbeat`` in the run folder every :data:`HEARTBEAT_SECONDS`
(:class:`Heartbeat`). A reader that finds a live status beside a heartbeat older than
:data:`STALE_SECONDS` shows the run as ``stopped unexpectedly`` after its last stored
round, with the command that resumes it (:func:`run_state`). The file's time is the
heartbeat: no write to the store, so the dashboard does not redraw a page for it.
Runs stored before heartbeats existed have no file and keep their stored status.
"""

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

#: The heartbeat's file name in a run folder.
HEARTBEAT_FILE = "heartbeat"
#: Seconds between two heartbeats.
HEARTBEAT_SECONDS = 5.0
#: A live run whose heartbeat is older than this has lost its server (four beats missed).
STALE_SECONDS = 20.0
#: The stored statuses of a run whose server should be beating.
LIVE_STATUSES = ("preparing", "running")
#: What a reader shows for a live run without a heartbeat.
STOPPED_UNEXPECTEDLY = "stopped unexpectedly"


class Heartbeat:
    """Touch ``folder/heartbeat`` now and every ``every`` seconds until the ``with`` block ends.

    A daemon thread does it, so it beats while the federation waits on sites or trains.
    """

    def __init__(self, folder: Path, every: float = HEARTBEAT_SECONDS) -> None:
        self.path = Path(folder) / HEARTBEAT_FILE
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fesf-heartbeat", daemon=True)

    def _touch(self) -> None:
        self.path.touch()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._touch()
            except OSError:  # a full or vanished disk: readers will see the run stopped, which is near the truth
                pass

    def __enter__(self) -> "Heartbeat":
        self._touch()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def resume_hint(name: str) -> str:
    """How to resume run ``name``: the run setting that ``flwr run``, ``make federate`` and ``fesf-server run`` take."""
    return f"resume it with --run-config \"resume='{name}'\" (flwr run . or fesf-server run)"


def last_heartbeat(folder: Path) -> float | None:
    """When the run in ``folder`` last beat (seconds since the epoch), or None for a run without heartbeats."""
    try:
        return (Path(folder) / HEARTBEAT_FILE).stat().st_mtime
    except FileNotFoundError:
        return None


def heartbeat_stopped(folder: Path, now: float | None = None) -> bool:
    """Whether the run in ``folder`` has a heartbeat older than :data:`STALE_SECONDS` (whatever its status)."""
    beat = last_heartbeat(folder)
    return beat is not None and (time.time() if now is None else now) - beat > STALE_SECONDS


@dataclass(frozen=True)
class RunState:
    """How a run stands, as readers show it.

    Attributes
    ----------
    status : str
        The stored status (``preparing``, ``running``, ``finished``, ``degraded``, ``stopped``,
        ``failed``), or ``stopped unexpectedly`` for a live status without a heartbeat.
    note : str or None
        One line on a run that did not simply finish: why it ended as it did and what to do
        (the resume command); None while it runs or once it has finished.
    """

    status: str
    note: str | None

    @property
    def live(self) -> bool:
        """Whether the run's server is at work."""
        return self.status in LIVE_STATUSES

    def line(self, name: str, rounds_done: int, rounds_total: int) -> str:
        """The run in one line, e.g. ``run 7: stopped unexpectedly after round 4 of 30; resume it with ...``."""
        return f"run {name}: {self.status}, round {rounds_done} of {rounds_total}" + (
            f": {self.note}" if self.note else ""
        )


def absence_note(absences: Mapping[int, Mapping[str, Mapping[str, str]]]) -> str:
    """The sites missing from rounds, in one line: ``site A missing from rounds 2-5 (...)``.

    ``absences`` is the run store's: by round, phase (train, evaluate), site, the reason.
    """
    rounds: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    for server_round, phases in sorted(absences.items()):
        for sites in phases.values():
            for site, reason in sites.items():
                if server_round not in rounds.setdefault(site, []):
                    rounds[site].append(server_round)
                reasons.setdefault(site, reason)
    parts = []
    for site, numbers in sorted(rounds.items()):
        listed = f"round {numbers[0]}" if len(numbers) == 1 else f"rounds {', '.join(map(str, numbers))}"
        parts.append(f"site {site} missing from {listed} ({reasons[site]})")
    return "; ".join(parts)


def run_state(
    name: str,
    folder: Path,
    info: Mapping[str, Any],
    rounds_done: int,
    absences: Mapping[int, Mapping[str, Mapping[str, str]]],
    now: float | None = None,
) -> RunState:
    """How run ``name`` stands, from its stored ``info``, its heartbeat, rounds and absences.

    Parameters
    ----------
    name, folder : str, Path
        The run's name and folder.
    info : Mapping
        The run store's run-level values (``status``, ``error``, ``rounds``...).
    rounds_done : int
        The last stored round (0 before the first).
    absences : Mapping
        The sites missing from rounds, as :func:`absence_note` takes them.
    now : float, optional
        The time to judge the heartbeat by (default: now).
    """
    status = info.get("status", "starting")
    total = info.get("rounds", rounds_done)
    after = f"after round {rounds_done} of {total}" if rounds_done else "before round 1"
    if status in LIVE_STATUSES:
        if heartbeat_stopped(folder, now):
            since = datetime.fromtimestamp(last_heartbeat(folder) or 0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return RunState(
                STOPPED_UNEXPECTEDLY,
                f"its server stopped unexpectedly {after} (last heartbeat {since}); {resume_hint(name)}",
            )
        return RunState(status, None)
    if status == "stopped":
        return RunState(status, f"stopped {after}; {resume_hint(name)}")
    if status == "failed":
        return RunState(status, info.get("error") or "failed; see the server's log")
    if status == "degraded":
        return RunState(status, f"finished without every site: {absence_note(absences)}")
    return RunState(status, None)
