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

from fesf_fed.errors import ConfigError
from fesf_fed.run_settings import RunSettings, parse_run_settings, simulated_site_configs


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


def check_run_config(app: Path, run_config: list[str], simulated: bool = True) -> RunSettings:
    """Validate a run's settings, and in a simulation its sites' configs, as the ServerApp would.

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
    return settings
