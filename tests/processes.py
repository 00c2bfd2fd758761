"""Finding and stopping the processes a test started, by a marker in their environment (Linux's ``/proc``).

Every process a test starts, and every process those start, inherits the test's
``FESF_HOME`` (the ``fesf_home`` fixture sets it), whatever session Flower puts it in
(the SuperLink starts its SuperExec in a session of its own).
"""

import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from fesf_fed.deployment.processes import process_alive

T = TypeVar("T")


def started_with(fesf_home: Path) -> dict[int, str]:
    """Running processes whose environment names this test's FESF_HOME, by PID: its command line."""
    marker = f"FESF_HOME={fesf_home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") and process_alive(int(entry.name)):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
    return found


def gone(left: Callable[[], dict[int, str]], timeout: float) -> dict[int, str]:
    """Poll ``left`` until it is empty or ``timeout`` s pass; what it returned last."""
    deadline = time.monotonic() + timeout
    while (found := left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` that is still there."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(found: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``found`` until it gives something true; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s")
