"""Run a command that the kernel stops when the process that started it dies (Linux).

``python follow_parent.py PARENT_PID -- COMMAND...`` asks Linux to send this process
SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then becomes COMMAND with
``exec`` (same PID). :class:`~fesf_fed.deployment.processes.FlowerProcess` starts
Flower's SuperLink, SuperNode and ``flwr run`` through it: they live in sessions of their
own, so without it a ``fesf-server`` or ``fesf-client`` killed with SIGKILL, which runs no
clean-up, would leave them running as orphans. Their own helpers (SuperExec, app
processes) watch their parent's PID (Flower's ``--parent-pid``) and follow them.

The death signal is set here, in a process of its own, rather than in ``preexec_fn``,
which is unsafe in a parent with threads (FlowerProcess relays output from threads).
It fires when the *thread* that started the process ends, so a FlowerProcess must be
started from a thread that lives as long as it (the main thread in both commands).
This file imports only the standard library: it runs with ``python -I -S``.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def follow_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Have Linux send ``signum`` to this process when its parent dies; False if it is gone already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before the prctl call: then no signal will ever come.
    return os.getppid() == parent_pid


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: follow_parent.py PARENT_PID -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    if not follow_parent(int(argv[0])):
        return 1
    # Python ignores these at start-up, and an ignored signal stays ignored across exec.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    command = argv[2:]
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"error: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
