"""A federated run's settings: Flower's flat run config, validated, and the sites it names.

Flower hands both apps the same flat mapping (``[tool.flwr.app.config]`` in
``pyproject.toml`` fused with ``--run-config``). :func:`parse_run_settings` checks
it once, with one-line errors that name the key, and :func:`simulated_site_configs`
turns it into one :class:`~fesf_fed.config.SiteConfig` per simulated site: either
one dataset split across ``num-sites`` sites, or a YAML file listing the sites.
Keys that start with ``site.`` set a field of every site's config where the
site's own config file leaves it unset, e.g. ``site.iqem.steps = 100``.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fesf_fed.config import SiteConfig, load_config, read_yaml, resolve_path
from fesf_fed.errors import ConfigError
from fesf_fed.models import MODEL_NAMES
from fesf_fed.recipe import Augmentation, ClassWeighting, LrSchedule, Optimiser, Recipe
from fesf_fed.training_data import TRAINING_MODES

#: The aggregation strategies a run can use (Flower's, by lower-case name).
STRATEGY_NAMES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedavgm",
    "fedmedian",
    "fedtrimmedavg",
)
#: How the aggregate is made differentially private, with Flower's strategy wrappers (``dp-aggregate``):
#: not at all, by clipping each site's update at the server, or by having each site clip its own.
DpAggregate = Literal["none", "server-fixed", "client-fixed"]
#: Run-config keys with this prefix give every site's config a value for that dotted field
#: (a site's own config file wins).
SITE_OVERRIDE_PREFIX = "site."
#: What a run folder in ``$FESF_HOME/runs`` may be called: Flower run ids, ``run-name`` values,
#: names a user gave a copy.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunSettings(BaseModel):
    """Every run-config key but the ``site.`` ones, with the defaults of ``pyproject.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=lambda name: name.replace("_", "-"))

    num_server_rounds: int = Field(20, ge=1)
    strategy: Literal[STRATEGY_NAMES] = "fedavg"  # type: ignore[valid-type]  # a Literal of a runtime tuple: pydantic reads it, mypy cannot
    fraction_train: float = Field(1.0, ge=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_train_nodes: int = Field(2, ge=0)
    min_evaluate_nodes: int = Field(2, ge=0)
    min_available_nodes: int = Field(2, ge=0)
    fedprox_mu: float = Field(0.1, ge=0)
    fedopt_eta: float = Field(0.01, gt=0)
    fedopt_tau: float = Field(1e-3, gt=0)
    fedavgm_server_lr: float = Field(1.0, gt=0)
    fedavgm_momentum: float = Field(0.9, ge=0, lt=1)
    fedtrimmedavg_beta: float = Field(0.2, ge=0, lt=0.5)
    mode: Literal[TRAINING_MODES] = "x_su_prime"  # type: ignore[valid-type]  # a Literal of a runtime tuple: pydantic reads it, mypy cannot
    model: Literal[MODEL_NAMES] = "smallcnn"  # type: ignore[valid-type]  # a Literal of a runtime tuple: pydantic reads it, mypy cannot
    pretrained_weights: str = ""
    local_epochs: int = Field(5, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    # The training recipe (fesf_fed.recipe.Recipe, whose defaults these are).
    class_weighting: ClassWeighting = "balanced"
    augment: Augmentation = "flip"
    optimiser: Optimiser = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    lr_schedule: LrSchedule = "cosine"
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    clip_grad_norm: float = Field(5.0, ge=0)
    # DP-SGD at the sites (fesf_fed.dp_sgd), part of the recipe.
    dp_sgd_noise_multiplier: float = Field(0.0, ge=0)
    dp_sgd_max_grad_norm: float = Field(1.0, gt=0)
    dp_sgd_delta: float = Field(1e-5, gt=0, lt=1)
    # Flower's differential privacy for the aggregate (server/strategies.py).
    dp_aggregate: DpAggregate = "none"
    dp_aggregate_noise_multiplier: float = Field(1.0, ge=0)
    dp_aggregate_clipping_norm: float = Field(1.0, gt=0)
    site_config: str = ""
    sites_file: str = ""
    num_sites: int = Field(3, ge=1)
    partition: Literal["iid", "dirichlet"] = "dirichlet"
    dirichlet_alpha: float = Field(1.0, gt=0)
    partition_seed: int = Field(0, ge=0)
    central_eval: str = ""
    #: The new run's folder name in ``$FESF_HOME/runs``; empty: Flower's run id.
    run_name: str = ""
    resume: str = ""
    keep_checkpoints: int = Field(2, ge=1)
    round_timeout: float = Field(3600.0, gt=0)
    #: Deployed sites and the SuperNode ids their keys were registered as, ``"A=123 B=456"``
    #: (``fesf-server run`` sets it); empty accepts any site name.
    site_nodes: str = Field("", pattern=r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*=\d+(\s+|$))*$")

    @field_validator("run_name", "resume")
    @classmethod
    def _run_name(cls, value: str) -> str:
        if value and not RUN_NAME.fullmatch(value):
            raise ValueError("use up to 128 letters, digits, '.', '_' and '-', beginning with a letter or digit")
        return value

    def recipe(self) -> Recipe:
        """How sites (and ``fesf-reproduce``'s central reference) train: the recipe keys as a :class:`Recipe`."""
        return Recipe(
            class_weighting=self.class_weighting,
            augment=self.augment,
            optimiser=self.optimiser,
            weight_decay=self.weight_decay,
            lr_schedule=self.lr_schedule,
            warmup_fraction=self.warmup_fraction,
            clip_grad_norm=self.clip_grad_norm,
            dp_sgd_noise_multiplier=self.dp_sgd_noise_multiplier,
            dp_sgd_max_grad_norm=self.dp_sgd_max_grad_norm,
            dp_sgd_delta=self.dp_sgd_delta,
        )

    def run_folder(self, flower_run: str) -> str:
        """The run's folder name in ``$FESF_HOME/runs``: the run to resume, else ``run-name``, else Flower's run id."""
        return self.resume or self.run_name or flower_run

    def epoch_position(self, server_round: int) -> tuple[int, int]:
        """Where round ``server_round``'s local epochs lie in the whole run: ``(first_epoch, total_epochs)``.

        Round ``r`` (from 1) of ``num-server-rounds`` rounds of ``local-epochs`` epochs starts at
        ``(r - 1) * local-epochs``; the learning-rate schedule spans all the rounds' epochs. A
        round beyond ``num-server-rounds`` (none should come) lengthens the run to it.
        """
        rounds = max(server_round, self.num_server_rounds)
        return max(server_round - 1, 0) * self.local_epochs, rounds * self.local_epochs

    def registered_sites(self) -> dict[str, int]:
        """``site-nodes`` as ``{site: node id}``."""
        pairs = (entry.split("=") for entry in self.site_nodes.split())
        return {site: int(node) for site, node in pairs}


def _path(value: str, key: str) -> Path:
    # Flower hands the apps bare values, with no file or folder a relative path could start from.
    return resolve_path(value, None, f"run config {key}")


def parse_run_settings(
    run_config: Mapping[str, Any],
) -> tuple[RunSettings, dict[str, Any]]:
    """Validate a run config.

    Parameters
    ----------
    run_config : Mapping
        Flower's flat run config (``context.run_config``).

    Returns
    -------
    settings : RunSettings
        The run's settings.
    site_defaults : dict
        ``site.``-prefixed keys without the prefix, e.g. ``{"iqem.steps": 100}``.

    Raises
    ------
    ConfigError
        One line naming the key, what it allows and the value given.
    """
    plain = {key: value for key, value in run_config.items() if not key.startswith(SITE_OVERRIDE_PREFIX)}
    site_defaults = {
        key[len(SITE_OVERRIDE_PREFIX) :]: value
        for key, value in run_config.items()
        if key.startswith(SITE_OVERRIDE_PREFIX)
    }
    try:
        settings = RunSettings.model_validate(plain)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key; see [tool.flwr.app.config] in pyproject.toml for the keys")
            else:
                problems.append(f"{key}: {error['msg'].removeprefix('Value error, ')} (got {error['input']!r})")
        raise ConfigError(f"run config {'; '.join(problems)}") from None
    if settings.run_name and settings.resume:
        raise ConfigError(
            f"run config run-name: {settings.run_name!r} names a new run and resume {settings.resume!r} "
            "continues one; give only one of them"
        )
    try:
        settings.recipe()
    except ValueError as exc:  # settings that are valid one by one but not together
        raise ConfigError(f"run config {exc}") from None
    if settings.dp_sgd_noise_multiplier and settings.strategy == "fedprox":
        raise ConfigError(
            "run config strategy: fedprox's proximal term cannot be trained with DP-SGD (Opacus noises only "
            "the per-image gradients); choose another strategy or set dp-sgd-noise-multiplier = 0"
        )
    for key in ("pretrained-weights", "site-config", "sites-file", "central-eval"):
        value = getattr(settings, key.replace("-", "_"))
        if value:
            _path(value, key)
    return settings, site_defaults


def _site_config(
    path: str,
    site_defaults: dict[str, Any],
    site: str,
    share: dict[str, Any] | None = None,
) -> SiteConfig:
    return load_config(path or None, run_config=site_defaults, assigned={**(share or {}), "site": site})


def simulated_site_configs(settings: RunSettings, site_defaults: dict[str, Any]) -> list[SiteConfig]:
    """The configs of the run's simulated sites, in site order.

    With ``sites-file`` set, one site per entry of its ``sites`` mapping (name: site
    config YAML, relative to the file). Otherwise ``num-sites`` sites named
    ``site-1`` ... share the dataset of ``site-config`` (when empty, the built-in
    defaults with the run's ``site.`` keys: pyproject.toml names the demo set), split ``iid`` or ``dirichlet``.

    Raises
    ------
    ConfigError
        For a missing or malformed file or an invalid site config.
    """
    if settings.sites_file:
        path = _path(settings.sites_file, "sites-file")
        raw = read_yaml(path, "sites file not found; set sites-file to an existing YAML file")
        sites = raw.get("sites") if isinstance(raw, dict) else None
        if not isinstance(sites, dict) or not sites:
            raise ConfigError(f"{path}: expected a 'sites' mapping of site name to site config file")
        return [
            _site_config(str(resolve_path(str(file), path.parent, f"{path}: sites.{name}")), site_defaults, str(name))
            for name, file in sites.items()
        ]
    configs = []
    for index in range(settings.num_sites):
        share = {
            "data.partition.count": settings.num_sites,
            "data.partition.index": index,
            "data.partition.scheme": settings.partition,
            "data.partition.alpha": settings.dirichlet_alpha,
            "data.partition.seed": settings.partition_seed,
        }
        configs.append(_site_config(settings.site_config, site_defaults, f"site-{index + 1}", share))
    return configs
