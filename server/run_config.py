"""A run's settings, checked before Flower starts anything.

``flwr run`` fuses the app's ``[tool.flwr.app.config]`` with ``--run-config`` and hands
the result to the ServerApp, which can only refuse it after Flower has started a
SuperLink, a simulation and every site. :func:`check_run_config` fuses them the same
way (with Flower's own functions) and validates them as the ServerApp will, so
``make federate`` and ``fesf-server run`` refuse a bad setting in a second, with one line.
"""

from pathlib import Path
from typing import Any

import click
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from fesf_fed.config import load_config
from fesf_fed.errors import ConfigError
from fesf_fed.federation.settings import RunSettings, parse_run_settings, simulated_site_configs

from .federation import check_resumable
from .run_store import StoredRun, check_new_run_name, runs_folder


def fused_run_config(app: Path, run_config: list[str]) -> dict[str, Any]:
    """The run config ``flwr run APP --run-config ...`` gives the apps.

    Raises
    ------
    ConfigError
        For a malformed ``--run-config`` or a key the app does not declare.
    """
    try:
        return dict(get_fused_config_from_dir(app, parse_config_args(run_config)))
    except click.ClickException as exc:
        raise ConfigError(f"--run-config: {exc.message}") from None
    except ValueError as exc:
        # Flower: "Key 'x' is not present in the main dictionary".
        raise ConfigError(
            f"--run-config: {exc}; the keys are those of [tool.flwr.app.config] in {app / 'pyproject.toml'}"
        ) from None


def app_run_config(app: Path, **overrides: Any) -> dict[str, Any]:
    """The app's default run config with ``overrides`` on top, as ``flwr run`` would fuse them (for Python callers)."""
    return {**fused_run_config(app, []), **overrides}


def check_run_config(app: Path, run_config: list[str], simulated: bool = True) -> RunSettings:
    """Validate a run's settings, and in a simulation its sites' configs, as the ServerApp would.

    Also what the ServerApp would find only later: the ``central-eval`` config, the
    ``pretrained-weights`` file, for ``resume`` that the run exists and may go on
    with these settings, and for ``run-name`` that no run has that name yet.

    Parameters
    ----------
    app : Path
        The Flower app folder (this checkout).
    run_config : list of str
        ``--run-config`` values, as ``flwr run`` takes them.
    simulated : bool
        Also load every simulated site's config (a deployed site's config is its own).

    Raises
    ------
    ConfigError
        One line naming the key, the allowed values and the value given.
    """
    settings, site_defaults = parse_run_settings(fused_run_config(app, run_config))
    if simulated:
        simulated_site_configs(settings, site_defaults)
    # What the ServerApp would otherwise find only after every site built its surrogates.
    if settings.central_eval:
        try:
            load_config(settings.central_eval, run_config=site_defaults, assigned={"site": "central"})
        except ConfigError as exc:
            raise ConfigError(f"run config central-eval: {exc}") from None
    if settings.pretrained_weights and not Path(settings.pretrained_weights).expanduser().is_file():
        raise ConfigError(
            f"run config pretrained-weights: {settings.pretrained_weights} not found; "
            "name a local torchvision .pth file"
        )
    if settings.resume:
        _check_resume(settings, site_defaults)
    if settings.run_name:
        check_new_run_name(settings.run_name)
    return settings


def _check_resume(settings: RunSettings, site_defaults: dict[str, Any]) -> None:
    """The run to resume exists in ``$FESF_HOME/runs`` and these settings may continue it (read-only)."""
    folder = runs_folder() / settings.resume
    try:
        run = StoredRun(folder)
    except FileNotFoundError:
        raise ConfigError(
            f"run config resume: no run {settings.resume!r} in {runs_folder()}; give the id of a run folder there"
        ) from None
    try:
        check_resumable(run, settings, site_defaults)
    finally:
        run.close()
