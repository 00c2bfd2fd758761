"""Where FESF-Fed keeps its state on a machine: ``$FESF_HOME`` (default ``~/.fesf``)."""

import os
from pathlib import Path


def fesf_home() -> Path:
    """Return the absolute FESF home folder (not created here).

    It holds ``cache/<site>/`` (surrogates and IQEM weights), ``secrets/<site>.key``
    (the key of the host assignment) and, from the federation on, ``runs/`` (and, while
    simulated sites prepare, ``progress/``: see :mod:`fesf_fed.progress`; with DP-SGD, a
    site's accountant per run in ``privacy/``: see :mod:`fesf_fed.dp_sgd`).
    """
    return Path(os.environ.get("FESF_HOME") or Path.home() / ".fesf").expanduser().resolve()


def private_folder(path: Path) -> Path:
    """Create ``path`` and its missing parents readable by the owner only (mode 0700).

    Everything under FESF_HOME derives from patient images (surrogates, file ids, IQEM
    weights) or is secret (site keys), so other users of the machine must not read it.
    """
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            folder.mkdir(mode=0o700, exist_ok=True)
    return path
