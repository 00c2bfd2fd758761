"""Where FESF-Fed keeps its state on a machine: ``$FESF_HOME`` (default ``~/.fesf``)."""

import os
from pathlib import Path


def fesf_home() -> Path:
    """Return the absolute FESF home folder (not created here).

    It holds ``cache/<site>/`` (surrogates and IQEM weights), ``secrets/<site>.key``
    (the key of the host assignment) and, from the federation on, ``runs/``.
    """
    return Path(os.environ.get("FESF_HOME") or Path.home() / ".fesf").expanduser().resolve()
