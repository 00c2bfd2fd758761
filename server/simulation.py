"""Run the federation in Flower's in-process simulation, with a given run config.

``flwr run .`` is the way to simulate from the shell. Python callers (``fesf-reproduce``,
the tests, the benchmarks) use :func:`simulate`: Flower's ``run_simulation`` gives apps
an empty run config, so both apps are wrapped here, and each call gets a copy of its
context carrying ``run_config``.
"""

import dataclasses
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fesf_fed.errors import FesfError
from fesf_fed.federation import protocol

from .app import run_app
from .federation import RunOutcome

#: A ClientApp handler: what ``@app.train()`` and friends register.
Handler = Callable[[Message, Context], Message]


def _client_module() -> ModuleType:
    """The ClientApp's module: ``clients.app`` beside this package, whatever the two are called.

    In a checkout, and in the bundle ``flwr run .`` makes of it, the apps are the top-level
    packages ``server`` and ``clients``; an installed wheel holds them as ``fesf_fed.server``
    and ``fesf_fed.clients`` (pyproject.toml's package-dir). This module is the one place
    that runs both apps, so the one place that needs the other's name.
    """
    namespace = __name__.removesuffix("server.simulation")
    return importlib.import_module(f"{namespace}clients.app")


def _client_app(config: dict[str, Any], instrument: Callable[[Handler], Handler] | None) -> ClientApp:
    app = ClientApp()
    handlers = _client_module()
    for register, handler in (
        (app.query(protocol.DESCRIBE_ACTION), handlers.describe),
        (app.query(protocol.PREPARE_ACTION), handlers.prepare),
        (app.train(mods=handlers.TRAIN_MODS), handlers.train_round),
        (app.evaluate(), handlers.evaluate_round),
    ):

        def wrapped(message: Message, context: Context, handler=handler) -> Message:
            return handler(message, dataclasses.replace(context, run_config=config))

        register(instrument(wrapped) if instrument else wrapped)
    return app


def _backend_config(num_supernodes: int) -> dict[str, Any]:
    """Ray's resources: every core, and the GPUs shared by the SuperNodes (Ray hides them otherwise)."""
    cores = os.cpu_count() or 1
    resources: dict[str, Any] = {"num_cpus": max(1, cores // num_supernodes)}
    init: dict[str, Any] = {"num_cpus": cores}
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        resources["num_gpus"] = gpus / num_supernodes
        init["num_gpus"] = gpus
    return {"client_resources": resources, "init_args": init}


def simulate(
    config: dict[str, Any], num_supernodes: int = 2, instrument: Callable[[Handler], Handler] | None = None
) -> RunOutcome:
    """Run the federation of ``config`` on ``num_supernodes`` simulated SuperNodes, in this process.

    Parameters
    ----------
    config : dict
        A complete flat run config, as ``flwr run`` would pass it (keys of
        ``[tool.flwr.app.config]``); the run folder lands in ``$FESF_HOME/runs``.
    num_supernodes : int
        Simulated SuperNodes; they host the run's ``num-sites`` sites in turn.
    instrument : callable, optional
        Wraps every ClientApp handler (the benchmarks time them, the tests record replies).

    Returns
    -------
    RunOutcome
        The run's folder and its summary (``outcome.summary.final``: the final figures).

    Raises
    ------
    FesfError
        If the run did not finish (Flower's simulation logs why).
    """
    server_app = ServerApp()
    # The ServerApp runs in a thread of this process: it hands its outcome back here.
    outcomes: list[RunOutcome] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        outcomes.append(run_app(grid, dataclasses.replace(context, run_config=config)))

    run_simulation(
        server_app,
        _client_app(config, instrument),
        num_supernodes=num_supernodes,
        backend_config=_backend_config(num_supernodes),
    )
    if not outcomes:
        raise FesfError("the simulated federation did not finish; see the log above")
    return outcomes[0]
