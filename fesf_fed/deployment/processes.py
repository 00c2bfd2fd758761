"""Starting, watching and stopping the Flower programs that ``fesf-server`` and ``fesf-client`` wrap.

Flower's SuperLink and SuperNode run as child processes, each in a session of its
own: a signal meant for them reaches their helpers too (SuperExec, app processes),
and a Flower error exit cannot take the wrapper down with it. Their output is
relayed line by line, so the wrapper can turn a known failure into one clear line.
On Linux each is started through ``follow_parent.py``, so that it is stopped when the
wrapper dies, even by SIGKILL (elsewhere a killed wrapper leaves it running).
"""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from fesf_fed.errors import ConfigError

#: Runs a command that the kernel stops when its parent dies (Linux only; see the file).
_FOLLOW_PARENT = Path(__file__).with_name("follow_parent.py")

#: Flower must not phone home, check for updates or install an app's dependencies, nor Ray send usage statistics.
QUIET_FLOWER_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def flower_env(**extra: str) -> dict[str, str]:
    """This process's environment for a Flower program: quiet, this Python's programs first on PATH, plus ``extra``."""
    env = {**os.environ, **QUIET_FLOWER_ENV, **extra}
    # Flower's programs start one another by name (flower-supernode runs flower-superexec).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def flower_executable(name: str) -> str:
    """The path of a Flower program (``flower-superlink``, ``flwr``...): beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name}: not found beside {sys.executable} or on PATH; install the project with pip")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def split_address(address: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``; a one-line error naming ``flag`` otherwise."""
    host, separator, port = address.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {address!r}: expected HOST:PORT, e.g. link.example.org:9092")
    return host, int(port)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (Linux's ``/proc``); a zombie waiting for its parent does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and every process descended from them that runs now (Linux's ``/proc``), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                # After the command's ")": state, then the parent's PID.
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    tree, pending = [], list(roots)
    while pending:
        pid = pending.pop(0)
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def port_open(host: str, port: int, timeout: float = 2.0) -> str | None:
    """None if a TCP connection to ``host:port`` succeeds, else why it failed."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


class FlowerProcess:
    """A Flower program running in its own session, its output relayed to ``sink``.

    ``watch`` sees every output line; a non-None return value is kept as the process's
    :attr:`failure` (the first one wins), which is how a wrapper learns *why* Flower
    gave up, even when (as Flower's SuperNode does after a failed connection) the
    process stays alive afterwards.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        sink: TextIO | None = None,
        watch: Callable[[str], str | None] | None = None,
    ) -> None:
        self.command = list(command)
        self.failure: str | None = None
        self.failed = threading.Event()
        self._sink = sink
        self._watch = watch
        env = flower_env() if env is None else env
        launch = self.command
        if sys.platform.startswith("linux"):
            # Not found is Popen's FileNotFoundError still, not the launcher's exit status.
            if shutil.which(self.command[0], path=env.get("PATH", os.defpath)) is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.command[0])
            # -I -S: the launcher needs nothing but the standard library, and starts faster without site.
            launch = [sys.executable, "-I", "-S", str(_FOLLOW_PARENT), str(os.getpid()), "--", *self.command]
        self.process = subprocess.Popen(
            launch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._relay, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _relay(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self._sink is not None:
                self._sink.write(line)
                self._sink.flush()
            if self._watch is not None and self.failure is None and (failure := self._watch(line)) is not None:
                self.failure = failure
                self.failed.set()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_failure_or_exit(self, poll: float = 0.2) -> int | None:
        """Block until the process exits (its status) or reports a failure (None)."""
        while self.running():
            if self.failed.wait(poll):
                return None
        self._reader.join(timeout=5)
        return self.process.returncode

    def stop(self, grace: float = 20.0) -> int:
        """Stop the process and everything in its session: SIGTERM, then SIGKILL for what is left after ``grace`` s."""
        if self.running():
            signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Helpers (SuperExec, app processes) get a moment to follow their leader, then are killed.
        deadline = time.monotonic() + min(grace, 5.0)
        while signal_group(self.pid, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        signal_group(self.pid, signal.SIGKILL)
        self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode


def signal_group(pid: int, signum: int) -> bool:
    """Send ``signum`` to the process group ``pid``; False if the group no longer exists (``signum`` 0 only asks)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


def wait_for_port(host: str, port: int, process: FlowerProcess, timeout: float) -> None:
    """Wait until ``process`` listens on ``host:port``; raise ConfigError if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while port_open(host, port, timeout=1.0) is not None:
        if not process.running():
            raise ConfigError(
                f"{Path(process.command[0]).name} exited with status {process.process.returncode} before listening "
                f"on {host}:{port}; see its output above"
            )
        if time.monotonic() > deadline:
            raise ConfigError(f"{Path(process.command[0]).name} did not listen on {host}:{port} within {timeout:.0f} s")
        time.sleep(0.2)
