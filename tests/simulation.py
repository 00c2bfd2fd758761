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

__all__ = ["REPO", "TINY_RUN", "Delay", "Handler", "SiteDown", "ValidationScores", "run_config", "simulate"]

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


def _scored(handler: Handler, best_round: int, message: Message, context: Context) -> Message:
    reply = handler(message, context)
    if message.metadata.message_type != "evaluate" or "val-confusion" not in reply.content:
        return reply
    record = reply.content.config_records["val-confusion"]
    counts = record["counts"]
    assert isinstance(counts, list)  # of ints, as protocol.confusion_record writes it
    size = int(len(counts) ** 0.5)
    total = sum(int(count) for count in counts)
    perfect = message.content.config_records["config"]["server-round"] == best_round
    # Every image right (on the diagonal), or every image answered as class 0 (a one-class model).
    rows = [total // size + (row < total % size) for row in range(size)]
    record["counts"] = [
        (rows[row] if column == row else 0) if perfect else (rows[row] if column == 0 else 0)
        for row in range(size)
        for column in range(size)
    ]
    return reply


@dataclasses.dataclass(frozen=True)
class ValidationScores:
    """A ``simulate`` instrument that rewrites the sites' validation counts: perfect in ``best_round``, one-class elsewhere.

    For tests of which round's model a run keeps: only the server's choice is under test, so the
    sites' real validation figures, which a tiny run cannot steer, are replaced.
    """

    best_round: int

    def __call__(self, handler: Handler) -> Handler:
        return functools.partial(_scored, handler, self.best_round)


def _down(handler: Handler, site_index: int, server_round: int, message: Message, context: Context) -> Message:
    config = message.content.config_records["config"]
    if (
        message.metadata.message_type == "train"
        and config.get("site-index") == site_index
        and config.get("server-round") == server_round
    ):
        raise RuntimeError(f"site {site_index + 1} is down (a test's fault)")
    return handler(message, context)


@dataclasses.dataclass(frozen=True)
class SiteDown:
    """A ``simulate`` instrument under which simulated site ``site_index`` fails to train in round ``server_round``.

    Its ClientApp raises, so Flower sends the server an error reply instead of a model.
    """

    site_index: int
    server_round: int

    def __call__(self, handler: Handler) -> Handler:
        return functools.partial(_down, handler, self.site_index, self.server_round)
