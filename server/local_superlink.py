"""The SuperLink that ``flwr run`` starts for local simulations, found by its FLWR_HOME and stopped by PID.

``flwr run .`` against Flower's ``local`` connection starts ``flower-superlink`` in the
background, in a session of its own, and leaves it running after the run (Flower records
no PID). It is told to log to ``$FLWR_HOME/local-superlink/superlink.log``, so that path in
its command line tells *this user's* SuperLink, for *this* Flower home, from everybody
else's: never stop Flower processes by name on a shared machine.
"""

import os
import signal
import time
from itertools import pairwise
from pathlib import Path

from flwr.supercore.utils import get_flwr_home

from fesf_fed.deployment.processes import process_alive, process_tree, signal_group


def local_superlink_log(flwr_home: Path | None = None) -> Path:
    """Where Flower's managed local SuperLink logs (``flwr.cli.local_superlink``'s path)."""
    return (flwr_home or get_flwr_home()) / "local-superlink" / "superlink.log"


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def local_superlink_pids(flwr_home: Path | None = None) -> list[int]:
    """PIDs of this user's ``flower-superlink`` processes that log to ``flwr_home``'s local-superlink folder.

    Parameters
    ----------
    flwr_home : Path, optional
        Flower's home; ``$FLWR_HOME`` or ``~/.flwr`` when None, as Flower resolves it.
    """
    log_file = str(local_superlink_log(flwr_home).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        argv = _command_line(int(entry.name))
        # The console script runs as `python .../flower-superlink ...`, or directly.
        is_superlink = any(Path(part).name == "flower-superlink" for part in argv[:2])
        logs_here = any(
            flag == "--log-file" and Path(value).resolve() == Path(log_file) for flag, value in pairwise(argv)
        )
        if is_superlink and logs_here:
            found.append(int(entry.name))
    return sorted(found)


def _signal(pid: int, signum: int) -> None:
    """Signal ``pid``'s process group when it leads one (as Flower starts it), else ``pid`` alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _process_groups(roots: list[int]) -> set[int]:
    """The process groups of ``roots`` and of every process descended from them."""
    groups = set()
    for pid in process_tree(roots):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:  # gone meanwhile
            continue
    return groups


def stop_local_superlink(flwr_home: Path | None = None, grace: float = 15.0) -> list[int]:
    """Stop the local SuperLink of ``flwr_home`` and its simulation processes; return the PIDs stopped.

    Flower starts the SuperLink as a session leader, and its SuperExec in a session of its own
    that holds ``flwr-simulation`` and Ray's processes. Ray's agents outlive a simulation that
    was stopped, so every process group below the SuperLink is found first: SIGTERM the
    SuperLink's group, then SIGKILL every group that is left after ``grace`` seconds.
    """
    pids = local_superlink_pids(flwr_home)
    groups = _process_groups(pids) - {os.getpgrp()}  # never the caller's own
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    # The SuperLink's helpers follow it within a moment; what has not by then is killed.
    deadline = time.monotonic() + min(grace, 5.0)
    while any(signal_group(group, 0) for group in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for group in groups:
        signal_group(group, signal.SIGKILL)
    return pids
