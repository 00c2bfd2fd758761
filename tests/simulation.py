"""Run the project's Flower apps in an in-process simulation with a given run config.

Flower's Python API (``run_simulation``) gives apps an empty run config, so the
apps are wrapped: each call gets a copy of its context carrying ``run_config``,
the defaults of ``pyproject.toml`` updated with the test's values.
"""

import dataclasses
import functools
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.config import flatten_dict
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

import clients.app
import server.app
from tests.conftest import TINY_BUILD

REPO = Path(__file__).resolve().parents[1]

#: A ClientApp handler: what ``@app.train()`` and friends register.
Handler = Callable[[Message, Context], Message]

#: A federation that finishes in seconds: tiny phantom sites, one local epoch.
TINY_RUN: dict[str, Any] = {
    "num-server-rounds": 2,
    "local-epochs": 1,
    "batch-size": 8,
    **{f"site.{key}": value for key, value in TINY_BUILD.items()},
}


def run_config(**overrides: Any) -> dict[str, Any]:
    """The app's default run config (from pyproject.toml) with ``overrides`` applied."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        defaults = flatten_dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])
    return {**defaults, **overrides}


def _delayed(handler: Handler, seconds: float, message: Message, context: Context) -> Message:
    if message.metadata.message_type == "train":
        time.sleep(seconds)
    return handler(message, context)


@dataclasses.dataclass(frozen=True)
class Delay:
    """A ``simulate`` instrument that makes every training reply take ``seconds`` longer.

    For tests that watch a run while it goes on: rounds last seconds without costing CPU.
    A module-level class and a ``functools.partial``, so Ray can ship it to its actors.
    """

    seconds: float

    def __call__(self, handler: Handler) -> Handler:
        return functools.partial(_delayed, handler, self.seconds)


def _client_app(config: dict[str, Any], instrument: Callable[[Handler], Handler] | None) -> ClientApp:
    app = ClientApp()
    for register, handler in (
        (app.query("describe"), clients.app.describe),
        (app.query("prepare"), clients.app.prepare),
        (app.train(), clients.app.train_round),
        (app.evaluate(), clients.app.evaluate_round),
    ):

        def wrapped(message: Message, context: Context, handler=handler) -> Message:
            return handler(message, dataclasses.replace(context, run_config=config))

        register(instrument(wrapped) if instrument else wrapped)
    return app


def simulate(
    config: dict[str, Any], num_supernodes: int = 2, instrument: Callable[[Handler], Handler] | None = None
) -> None:
    """Run the federation of ``config`` on ``num_supernodes`` simulated SuperNodes, in this process.

    ``instrument``, if given, wraps every ClientApp handler (benchmarks time them with it).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        server.app.main(grid, dataclasses.replace(context, run_config=config))

    run_simulation(
        server_app,
        _client_app(config, instrument),
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": 1},
            "init_args": {"num_cpus": 2},
        },
    )
