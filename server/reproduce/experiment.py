"""One reproduction of the paper's Tables 1-3: every training mode, federated and central, over seeds.

A reproduction is a folder, ``$FESF_HOME/reproductions/<name>/``, whose ``results.json``
holds the plan and one entry per finished cell: a (setting, mode, seed) triple, where
the setting is ``federated`` (a Flower simulation of the plan's sites, its run folder in
``$FESF_HOME/runs`` like any other) or ``central`` (the same sites' images pooled,
:mod:`fesf_fed.central`). The file is rewritten atomically after each cell, so an
interrupted reproduction continues where it stopped when it is started again.

Seeds vary the initial weights and the shuffling. The split of the dataset over the
sites and the surrogates stay fixed (``partition-seed``; each site builds its
surrogates once, and every mode and seed reuses them).
"""

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.central import pooled_site_data, train_central
from fesf_fed.config import SiteConfig, load_config
from fesf_fed.device import select_device
from fesf_fed.errors import ConfigError, FesfError
from fesf_fed.federation.run_summary import SUMMARY_FILE
from fesf_fed.federation.settings import RunSettings, parse_run_settings, simulated_site_configs
from fesf_fed.home import fesf_home
from fesf_fed.recipe import Recipe
from fesf_fed.task import classification_figures
from fesf_fed.training_data import TRAINING_MODES

from ..run_store import RUN_NAME
from ..simulation import simulate
from .paper import PAPER_PIPELINE

#: Where a cell trains: a Flower simulation of the sites, or their images pooled in one place.
TRAINING_PLACES = ("federated", "central")
#: Run-config keys a reproduction sets itself; ``--set`` may not change them.
PLAN_KEYS = {
    "num-server-rounds",
    "local-epochs",
    "model",
    "mode",
    "seed",
    "site-config",
    "sites-file",
    "num-sites",
    "partition",
    "run-name",
    "resume",
    "central-eval",
    "site.data.image_size",
}


def reproductions_folder() -> Path:
    """Where reproductions are kept: ``$FESF_HOME/reproductions``."""
    return fesf_home() / "reproductions"


class Plan(BaseModel):
    """What a reproduction trains: one dataset and model, every mode, federated and central, per seed.

    A suite file's entries are plans (with the dataset's name for the tables), and so are
    ``fesf-reproduce run``'s options; the defaults are the command's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    #: The dataset's site config (absolute path); "" for the built-in phantoms.
    site_config: str = ""
    model: str = "smallcnn"
    image_size: int = Field(64, ge=8)
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = Field(5, ge=1)
    local_epochs: int = Field(2, ge=1)
    modes: tuple[str, ...] = TRAINING_MODES
    central: bool = True
    #: Further run-config keys, as ``flwr run --run-config`` takes them (``site.`` ones included); a suite
    #: file calls them ``run_config``, ``results.json`` (and code) ``overrides``.
    overrides: dict[str, Any] = Field(default_factory=dict, validation_alias=AliasChoices("run_config", "overrides"))

    def run_config(self, mode: str, seed: int, dataset_file: Path) -> dict[str, Any]:
        """The flat run config of the federated cell (``mode``, ``seed``) over the sites of ``dataset_file``."""
        return {
            **self.overrides,
            "num-server-rounds": self.rounds,
            "local-epochs": self.local_epochs,
            "model": self.model,
            "mode": mode,
            "seed": seed,
            "site-config": str(dataset_file),
        }

    def cells(self) -> list[tuple[str, str, int]]:
        """Every (setting, mode, seed), in the order they run: seed by seed, federated first."""
        places = TRAINING_PLACES if self.central else TRAINING_PLACES[:1]
        return [(place, mode, seed) for seed in self.seeds for place in places for mode in self.modes]

    def to_json(self) -> dict[str, Any]:
        """The plan as ``results.json`` stores it (lists for tuples)."""
        return self.model_dump(mode="json")


def cell_key(setting: str, mode: str, seed: int) -> str:
    """A cell's key in ``results.json``, e.g. ``federated/x_su_prime/0``."""
    return f"{setting}/{mode}/{seed}"


def dataset_config(plan: Plan) -> SiteConfig:
    """The dataset's site config at the plan's image size: what every site is split from.

    The size is set as an override: a run config's ``site.`` keys would lose to the file's own value.
    """
    return load_config(plan.site_config or None, assigned={"data.image_size": plan.image_size})


def _field_names(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted name of every field and section of a config dump, e.g. ``iqem`` and ``iqem.steps``."""
    names = set()
    for key, value in tree.items():
        names.add(prefix + key)
        if isinstance(value, dict):
            names |= _field_names(value, f"{prefix}{key}.")
    return names


def check_plan(plan: Plan) -> SiteConfig:
    """Validate every cell's run config up front; return the dataset's config (:func:`dataset_config`).

    Raises
    ------
    ConfigError
        One line naming the key or file: an unknown mode or model, a missing dataset, a ``site.``
        key for a field the dataset config sets itself...
    """
    if not RUN_NAME.fullmatch(plan.name):
        raise ConfigError(f"--name {plan.name!r}: use letters, digits, '.', '_' and '-' only")
    if not plan.seeds or min(plan.seeds) < 0 or len(set(plan.seeds)) != len(plan.seeds):
        raise ConfigError(f"--seeds {list(plan.seeds)}: give one or more different seeds, none negative")
    if len(set(plan.modes)) != len(plan.modes):
        raise ConfigError(f"--modes {','.join(plan.modes)}: name each mode once")
    unknown = [mode for mode in plan.modes if mode not in TRAINING_MODES]
    if unknown or not plan.modes:
        raise ConfigError(f"--modes {','.join(unknown)}: choose from {', '.join(TRAINING_MODES)}")
    if "plaintext" not in plan.modes:
        raise ConfigError("--modes: include plaintext, the reference every other mode is measured against")
    if taken := sorted(PLAN_KEYS & set(plan.overrides)):
        raise ConfigError(
            f"--set {', '.join(taken)}: a reproduction sets this itself (3 sites, Dirichlet split, fresh runs); "
            "use the command's own options"
        )
    dataset = dataset_config(plan)  # a bad dataset config fails here, before anything runs
    explicit = _field_names(dataset.model_dump(exclude_unset=True))
    for key in plan.overrides:
        if key.startswith("site.") and key.removeprefix("site.") in explicit:
            raise ConfigError(
                f"--set {key}: {plan.site_config or 'the built-in phantom config'} sets "
                f"{key.removeprefix('site.')} itself and a site. key only fills unset fields; "
                "edit a copy of the dataset config instead"
            )
    for seed in plan.seeds:
        for mode in plan.modes:
            parse_run_settings(plan.run_config(mode, seed, Path("/dataset.yaml")))
    return dataset


def plan_sites(plan: Plan, dataset_file: Path) -> tuple[RunSettings, list[SiteConfig]]:
    """The settings of the plan's first cell and its sites, split from ``dataset_file``."""
    settings, site_defaults = parse_run_settings(plan.run_config(plan.modes[0], plan.seeds[0], dataset_file))
    return settings, simulated_site_configs(settings, site_defaults)


def plan_recipe(plan: Plan) -> dict[str, Any]:
    """The training recipe of every cell of ``plan`` (its run config's recipe keys), as ``results.json`` keeps it."""
    settings, _ = parse_run_settings(plan.run_config(plan.modes[0], plan.seeds[0], Path("/dataset.yaml")))
    return asdict(settings.recipe())


def results_recipe(results: dict[str, Any]) -> Recipe:
    """The recipe every cell of ``results`` trained with; results that keep none predate recipes (legacy training)."""
    return Recipe(**results["recipe"]) if "recipe" in results else Recipe.legacy()


def _check_recipe(path: Path, results: dict[str, Any], recipe: dict[str, Any]) -> None:
    """Refuse to add cells trained with ``recipe`` to results whose cells were trained with another."""
    made_with, wanted = results_recipe(results), Recipe(**recipe)
    theirs, ours = made_with.changes_from(wanted), wanted.changes_from(made_with)
    changed = [f"{key} {theirs[key]!r}, not {ours[key]!r}" for key in theirs]
    if changed and results["cells"]:
        raise ConfigError(
            f"{path}: its cells were trained with another recipe ({'; '.join(changed)}); "
            "choose another --name or delete the folder"
        )


def pipeline_variant(sites: list[SiteConfig]) -> dict[str, float]:
    """The IHM strengths that differ from the paper's, e.g. ``{"refine_beta": 0.2}``; empty for the paper's."""
    pipeline = sites[0].pipeline
    return {key: getattr(pipeline, key) for key, value in PAPER_PIPELINE.items() if getattr(pipeline, key) != value}


def _figures(confusion: np.ndarray, auroc: float | None) -> dict[str, Any]:
    """A cell's figures: those of its confusion matrix, and its AUROC where it has one (a cell without has none)."""
    figures = {**classification_figures(confusion), "examples": int(confusion.sum()), "confusion": confusion.tolist()}
    return figures if auroc is None else {**figures, "auroc": auroc}


def _federated_cell(plan: Plan, mode: str, seed: int, dataset_file: Path) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        outcome = simulate(plan.run_config(mode, seed, dataset_file))
    except FesfError as exc:
        raise FesfError(f"the {mode} federation (seed {seed}) did not finish: {exc}") from None
    seconds = time.perf_counter() - began
    final = outcome.summary.final
    confusion = final.confusion.get("evaluate") if final else None
    if final is None or confusion is None:
        raise FesfError(f"the {mode} federation (seed {seed}) evaluated no site: see {outcome.folder / SUMMARY_FILE}")
    return {
        "run": outcome.run_id,
        "seconds": seconds,
        # Pooled over every site's test split: the sites' confusion matrices summed. AUROC does not pool
        # from them: it is the sites' AUROCs averaged by their test images.
        **_figures(np.asarray(confusion), final.auroc),
        # The round whose global model these figures are of: the best on the sites' validation images.
        "round": final.round,
        "sites": {site: {"accuracy": values["accuracy"], "f1": values["f1"]} for site, values in final.sites.items()},
        "quality": {site: details.to_json() for site, details in outcome.summary.sites.items()},
    }


def _central_cell(plan: Plan, mode: str, seed: int, sites: list[SiteConfig], settings: RunSettings) -> dict[str, Any]:
    began = time.perf_counter()
    data = pooled_site_data(sites, mode)
    result = train_central(
        data,
        model_name=plan.model,
        epochs=plan.rounds * plan.local_epochs,
        lr=settings.learning_rate,
        batch_size=settings.batch_size,
        seed=seed,
        device=select_device(sites[0].device),
        weights=Path(settings.pretrained_weights) if settings.pretrained_weights else None,
        # The federated cells' recipe (their run config's, --set included), so the two stay comparable.
        recipe=settings.recipe(),
    )
    # The AUROC of every site's test images pooled, as the federated cell's cannot be.
    return {
        "seconds": time.perf_counter() - began,
        **_figures(np.asarray(result.test.confusion), result.test.auroc),
        # The epoch whose model these figures are of: the best on the pooled validation images.
        "epoch": result.epoch,
        # With DP-SGD, the privacy spent on the pooled images (the federated cells' is in their runs' summaries).
        **({} if result.epsilon is None else {"epsilon": result.epsilon}),
    }


def _load_results(folder: Path) -> dict[str, Any]:
    """A reproduction's ``results.json``.

    Raises
    ------
    ConfigError
        When the folder holds no readable results.
    """
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run fesf-reproduce run --name {folder.name} first") from None
    except json.JSONDecodeError:
        results = None
    if not isinstance(results, dict) or not isinstance(results.get("plan"), dict) or "cells" not in results:
        raise ConfigError(f"{path}: not a reproduction's results; delete it to start the reproduction again")
    return results


def load_plan_results(plan: Plan, stale_ok: bool = False) -> dict[str, Any]:
    """The ``results.json`` of ``plan``'s folder, refused when it was made with other settings.

    With ``stale_ok`` (a page written from finished cells), results whose dataset site config
    has changed since (the entry itself has not) are returned instead, with what differs under
    ``"stale"``: the page shows them as made and says so.

    Raises
    ------
    ConfigError
        When the folder holds no results, or results of another plan or dataset config: its cells
        would not be the plan's.
    """
    folder = reproductions_folder() / plan.name
    results = _load_results(folder)
    if "site" not in results:
        # From fesf-reproduce before 2026-11-29: its dataset.yaml was the whole config, the sites' own,
        # and site. keys did not reach the sites.
        if any(key.startswith("site.") for key in plan.overrides):
            raise ConfigError(
                f"{folder / 'results.json'}: made when --set site. keys did not reach the sites; "
                "choose another --name or delete the folder"
            )
        results["site"] = plan_sites(plan, folder / "dataset.yaml")[1][0].model_dump(mode="json")
        results.pop("pipeline", None)
    planned = plan.to_json()
    changed = sorted(key for key in planned if results["plan"].get(key) != planned[key])
    # Read back through the model first: a field added since (with its default) is no change.
    stored = SiteConfig.model_validate(results["dataset"]).model_dump(mode="json") if "dataset" in results else None
    current = dataset_config(plan).model_dump(mode="json")
    if stored != current:
        sections = sorted(name for name in current if stored is None or stored.get(name) != current[name])
        if stale_ok and not changed:
            return {**results, "stale": [f"the dataset's site config: {', '.join(sections)}"]}
        changed.append(f"the dataset's site config: {', '.join(sections)}")
    if changed:
        raise ConfigError(
            f"{folder / 'results.json'}: made with other settings ({', '.join(changed)}); "
            "choose another --name or delete the folder"
        )
    return results


def _environment() -> dict[str, str]:
    """Where the cells were trained, for the results page."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return {"date": f"{datetime.now(UTC):%Y-%m-%d}", "device": device, "torch": torch.__version__}


def reproduce(plan: Plan, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every cell of ``plan`` that ``results.json`` does not hold yet; return the results.

    Parameters
    ----------
    plan : Plan
        What to train.
    report : callable
        Receives one line per cell started and finished.

    Raises
    ------
    ConfigError
        For an invalid plan, or a folder of the same name made with another plan.
    FesfError
        When a federation fails.
    """
    dataset = check_plan(plan)
    folder = reproductions_folder() / plan.name
    path = folder / "results.json"
    recipe = plan_recipe(plan)
    if path.exists():
        results = load_plan_results(plan)
        _check_recipe(path, results, recipe)
    else:
        results = {
            "plan": plan.to_json(),
            "dataset": dataset.model_dump(mode="json"),
            "environment": _environment(),
            "cells": {},
        }
    # The sites are split from this file: the dataset's config at the plan's size, kept with the results.
    # Only the fields the dataset config sets, so that the plan's site. keys fill the others.
    dataset_file = folder / "dataset.yaml"
    explicit = dataset.model_dump(mode="json", exclude_unset=True)
    with atomic_writer(dataset_file) as stream:
        stream.write(yaml.safe_dump(explicit, sort_keys=False).encode("utf-8"))
    settings, sites = plan_sites(plan, dataset_file)
    results["site"] = sites[0].model_dump(mode="json")  # the first site's config as used
    results["recipe"] = recipe  # how every cell, federated and central, trains
    results["variant"] = pipeline_variant(sites)
    cells = plan.cells()
    for number, (setting, mode, seed) in enumerate(cells, start=1):
        key = cell_key(setting, mode, seed)
        if key in results["cells"]:
            continue
        report(f"[{number}/{len(cells)}] {setting} {mode}, seed {seed}")
        if setting == "federated":
            cell = _federated_cell(plan, mode, seed, dataset_file)
        else:
            cell = _central_cell(plan, mode, seed, sites, settings)
        results["cells"][key] = cell
        write_json(path, results)
        auroc = f"{cell['auroc']:.3f}" if "auroc" in cell else "–"
        report(
            f"[{number}/{len(cells)}] {setting} {mode}, seed {seed}: accuracy {cell['accuracy']:.3f}, "
            f"balanced accuracy {cell['balanced_accuracy']:.3f}, macro-F1 {cell['f1']:.3f}, AUROC {auroc} "
            f"({cell['seconds']:.0f} s)"
        )
    write_json(path, results)
    return results
