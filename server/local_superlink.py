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


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, signum: int) -> None:
    """Signal ``pid``'s process group when it leads one (as Flower starts it), else ``pid`` alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_local_superlink(flwr_home: Path | None = None, grace: float = 15.0) -> list[int]:
    """Stop the local SuperLink of ``flwr_home`` and its simulation processes; return the PIDs stopped.

    Flower starts the SuperLink as a session leader, so its ``flwr-simulation`` and Ray
    processes share its process group: SIGTERM the group, then SIGKILL what is left after
    ``grace`` seconds.
    """
    pids = local_superlink_pids(flwr_home)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    return pids
