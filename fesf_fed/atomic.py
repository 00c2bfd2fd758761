"""Atomic file writes: a reader sees the old file or the whole new one, never a part."""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fesf_fed.home import private_folder


@contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for binary writing; move it into place on success.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic
    on POSIX file systems. If the block raises (or the process dies), ``path`` is
    untouched and the temporary file is removed (or left with a ``.tmp`` suffix).
    The file (mkstemp's mode 0600) and any folder made for it (0700) are private to
    their owner: what FESF-Fed writes derives from patient images.
    """
    private_folder(path.parent)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_writer(path) as stream:
        stream.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
