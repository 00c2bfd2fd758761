"""The one exception type users see: its message is a single line that says what to do."""

import sys
from collections.abc import Callable

#: Exit status of a command that a user error stopped.
USER_ERROR = 2
#: Exit status of a command that Ctrl-C stopped (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class FesfError(Exception):
    """A problem with the user's input (config, data, hosts, device) that they can fix.

    The command-line entry points print ``error: <message>`` and exit with status 2
    instead of a traceback, so every message names the file or field at fault and
    says what to change.
    """


class ConfigError(FesfError):
    """A configuration file or value is invalid."""


class DataError(FesfError):
    """A data source, image file or host bank cannot be used."""


def run_command(command: Callable[[], int], interrupted: str) -> int:
    """Run a command-line entry point's work and return its exit status.

    A :class:`FesfError` prints ``error: <message>`` (status 2) and Ctrl-C prints
    ``interrupted`` (status 130), both on stderr and without a traceback; so does a path
    given by the user that is a symbolic link loop (status 2).
    """
    try:
        return command()
    except FesfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED
    except RuntimeError as exc:
        # Path.resolve() on a path given by the user that is a symbolic link loop (Python 3.11, 3.12).
        if not str(exc).startswith("Symlink loop from "):
            raise
        where = str(exc).removeprefix("Symlink loop from ").strip("'")
        print(
            f"error: {where}: a symbolic link loop; remove the link or point it at a real file or folder",
            file=sys.stderr,
        )
        return USER_ERROR
