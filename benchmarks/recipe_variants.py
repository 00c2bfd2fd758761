"""Central test figures of one reproduction entry trained with other models and recipes, beside its own.

A reproduction's central cell (``fesf-reproduce``'s ``train_central`` on the sites' images
pooled) for each variant and seed, on the entry's sites exactly as the suite splits them.
The first variant is the entry as the suite trains it; every other one prints its figures and
its difference from the first, measured in the same run on the same images, so a change of
model or recipe is judged against the default trained alongside it, not against a page made
on another day.

A variant is ``MODEL`` or ``MODEL:KEY=VALUE,KEY=VALUE`` with recipe keys as the run config
names them (``class-weighting``, ``augment``, ``optimiser``, ``weight-decay``,
``lr-schedule``, ``warmup-fraction``, ``clip-grad-norm``). An entry's pretrained weights reach the
variants of its own model only. Each line gives the validation macro-F1 too: choosing a variant by
the test figures fits the test images.

    PYTHONPATH=. python benchmarks/recipe_variants.py retinamnist-baseline-smallcnn-28 \\
        --variants smallcnn_wide:class-weighting=none smallcnn:augment=light --seeds 0,1,2

Run one process per core with ``OMP_NUM_THREADS=1``: two torch processes sharing two cores
with their default thread counts run many times slower.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fesf_fed, clients, server: run from anywhere

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from typing import Any

import yaml

from fesf_fed.central import pooled_site_data, train_central
from fesf_fed.device import select_device
from fesf_fed.errors import ConfigError, run_command
from fesf_fed.models import MODEL_NAMES, min_image_size
from fesf_fed.recipe import Recipe
from server.reproduce.cli import load_suite
from server.reproduce.experiment import Plan, check_plan, plan_sites

FIGURES = ("accuracy", "balanced_accuracy", "f1", "auroc")


def parse_variant(text: str, default: Recipe, image_size: int) -> tuple[str, Recipe]:
    """``MODEL[:KEY=VALUE,...]`` as a model name and the default recipe with those keys changed.

    Raises
    ------
    ConfigError
        One line naming the variant: an unknown model or key, a bad value, a model too big for the images.
    """
    model, _, changes = text.partition(":")
    if model not in MODEL_NAMES:
        raise ConfigError(f"--variants {text}: unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if image_size < min_image_size(model):
        raise ConfigError(
            f"--variants {text}: {model} needs images of at least {min_image_size(model)} px, not {image_size}"
        )
    types = {field.name: field.type for field in dataclasses.fields(Recipe)}
    values: dict[str, Any] = {}
    try:
        for change in filter(None, changes.split(",")):
            key, _, value = change.partition("=")
            if key.replace("-", "_") not in types:
                keys = ", ".join(field.replace("_", "-") for field in types)
                raise ConfigError(f"--variants {text}: unknown recipe key {key!r}; choose one of {keys}")
            values[key.replace("-", "_")] = float(value) if types[key.replace("-", "_")] is float else value
        return model, dataclasses.replace(default, **values)
    except ValueError as exc:
        raise ConfigError(f"--variants {text}: {exc}") from None


def _label(model: str, recipe: Recipe, default: Recipe) -> str:
    changes = ", ".join(f"{key} {value}" for key, value in recipe.changes_from(default).items())
    return f"{model} ({changes})" if changes else model


def _figure(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def run(plan: Plan, variant_texts: list[str], seeds: list[int]) -> int:
    """Train every variant's central cells, seed by seed; print each one's figures and its difference from the first."""
    dataset = check_plan(plan)
    with tempfile.TemporaryDirectory() as folder:
        # The sites are split from the dataset's config at the plan's size, as fesf-reproduce writes it.
        dataset_file = Path(folder) / "dataset.yaml"
        dataset_file.write_text(yaml.safe_dump(dataset.model_dump(mode="json", exclude_unset=True)))
        settings, sites = plan_sites(plan, dataset_file)
        default = settings.recipe()
        variants = [(plan.model, default), *(parse_variant(text, default, plan.image_size) for text in variant_texts)]
        data = pooled_site_data(sites, "plaintext")
    device = select_device(sites[0].device)
    weights = Path(settings.pretrained_weights) if settings.pretrained_weights else None
    epochs = plan.rounds * plan.local_epochs
    print(
        f"{plan.name}: {len(data.train_labels)} training, {len(data.val_labels)} validation, "
        f"{len(data.test_labels)} test images; plaintext; {epochs} epochs; seeds {', '.join(map(str, seeds))}"
    )
    means: list[dict[str, float]] = []
    for model, recipe in variants:
        label = _label(model, recipe, default)
        figures: dict[str, list[float]] = {name: [] for name in (*FIGURES, "validation_f1", "seconds")}
        for seed in seeds:
            began = time.perf_counter()
            result = train_central(
                data,
                model_name=model,
                epochs=epochs,
                lr=settings.learning_rate,
                batch_size=settings.batch_size,
                seed=seed,
                device=device,
                weights=weights if model == plan.model else None,
                recipe=recipe,
            )
            figures["seconds"].append(time.perf_counter() - began)
            # NaN, not 0, where a figure is missing (no AUROC on a one-class test set): it shows, never averages in.
            for name in FIGURES:
                figures[name].append(math.nan if (value := getattr(result.test, name)) is None else float(value))
            figures["validation_f1"].append(math.nan if result.validation_f1 is None else result.validation_f1)
            print(
                f"  {label}, seed {seed}: "
                + ", ".join(f"{name} {_figure(figures[name][-1])}" for name in FIGURES)
                + f"; validation macro-F1 {_figure(result.validation_f1)} (epoch {result.epoch}, "
                f"{figures['seconds'][-1]:.0f} s)",
                flush=True,
            )
        mean = {name: statistics.mean(values) for name, values in figures.items()}
        means.append(mean)
        against = ""
        if len(means) > 1:
            against = (
                " | against the first: "
                + ", ".join(f"{name} {mean[name] - means[0][name]:+.3f}" for name in (*FIGURES, "validation_f1"))
                + f", time x{mean['seconds'] / means[0]['seconds']:.2f}"
            )
        print(
            f"{label}: mean "
            + ", ".join(f"{name} {_figure(mean[name])}" for name in (*FIGURES, "validation_f1"))
            + against,
            flush=True,
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("entry", help="a reproduction's name in the suite file")
    parser.add_argument("--suite", type=Path, default=REPO / "configs" / "results.yaml")
    parser.add_argument("--variants", nargs="*", default=[], help="MODEL or MODEL:KEY=VALUE,... (see above)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    args = parser.parse_args()

    def command() -> int:
        suite = args.suite.resolve()
        entries = {entry.name: entry for entry in load_suite(suite).reproductions}
        if args.entry not in entries:
            raise ConfigError(f"{args.entry}: not an entry of {suite}; choose one of {', '.join(entries)}")
        try:
            seeds = [int(seed) for seed in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds}: give comma-separated whole numbers, e.g. 0,1,2") from None
        return run(entries[args.entry].to_plan(suite.parent), args.variants, seeds)

    return run_command(command, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
