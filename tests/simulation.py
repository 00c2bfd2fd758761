"""Run configs and instruments for the tests' in-process simulations (:func:`server.simulation.simulate`).

:func:`run_config` is the app's default run config, from ``pyproject.toml``, updated
with a test's values, as ``flwr run . --run-config`` would make it.
"""

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from server.run_config import app_run_config
from server.simulation import Handler, simulate
from tests.conftest import TINY_BUILD

__all__ = ["REPO", "TINY_RUN", "Delay", "Handler", "run_config", "simulate"]

REPO = Path(__file__).resolve().parents[1]

#: A federation that finishes in seconds: tiny phantom sites (not the default demo set), one local epoch.
TINY_RUN: dict[str, Any] = {
    "num-server-rounds": 2,
    "site.data.source": "phantom",
    "local-epochs": 1,
    "batch-size": 8,
    **{f"site.{key}": value for key, value in TINY_BUILD.items()},
}


def run_config(**overrides: Any) -> dict[str, Any]:
    """The app's default run config (from pyproject.toml) with ``overrides`` applied."""
    return app_run_config(REPO, **overrides)


def _delayed(handler: Handler, seconds: float, message_type: str, message: Message, context: Context) -> Message:
    reply = handler(message, context)
    if message.metadata.message_type == message_type:
        time.sleep(seconds)
    return reply


@dataclasses.dataclass(frozen=True)
class Delay:
    """A ``simulate`` instrument that holds back every reply to ``message_type`` for ``seconds``.

    For tests that watch a run while it goes on: rounds last seconds without costing CPU,
    and a site's work is done (its progress file written) a while before its reply comes.
    A module-level class and a ``functools.partial``, so Ray can ship it to its actors.
    """

    seconds: float
    message_type: str = "train"

    def __call__(self, handler: Handler) -> Handler:
        return functools.partial(_delayed, handler, self.seconds, self.message_type)
