"""The ``fesf-reproduce`` command: run reproductions and write their tables.

``fesf-reproduce run`` trains one dataset and model in every mode; ``fesf-reproduce
suite configs/results.yaml`` runs the reproductions a suite file lists and writes the
results page (``make results`` regenerates ``docs/results.md`` this way).
"""

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fesf_fed.atomic import atomic_writer
from fesf_fed.config import parse_assignments, read_yaml, resolve_path, resolve_path_fields
from fesf_fed.errors import ConfigError, run_command
from fesf_fed.training_data import TRAINING_MODES

from .experiment import Plan, load_plan_results, reproduce, reproductions_folder
from .report import Published, Section, reproduction_markdown, results_markdown


class _Entry(Plan):
    """One reproduction of a suite file: a plan, the dataset's name in the tables, and published figures if any."""

    dataset: str
    published: Published | None = None

    def to_plan(self, base: Path) -> Plan:
        """The entry's plan; a relative ``site_config``, or path in a ``site.`` key, is relative to ``base``."""
        site_keys = {
            key.removeprefix("site."): value for key, value in self.overrides.items() if key.startswith("site.")
        }
        return Plan(
            **self.model_dump(exclude={"dataset", "site_config", "overrides", "published"}),
            site_config=_resolve(self.site_config, base),
            overrides={
                **self.overrides,
                **{f"site.{key}": value for key, value in resolve_path_fields(site_keys, base).items()},
            },
        )


def _reproduce(entry: _Entry, base: Path) -> dict[str, Any]:
    """Run the entry's missing cells and write its ``results.md``; return its results."""
    plan = entry.to_plan(base)
    results = reproduce(plan)
    _write_text(reproductions_folder() / plan.name / "results.md", reproduction_markdown(results, entry.dataset))
    return results


class _Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    output: str
    notes: str = ""
    reproductions: list[_Entry]


def _write_text(path: Path, text: str) -> None:
    """Write a results page atomically, readable by all (it holds figures, not patient data)."""
    with atomic_writer(path) as stream:
        stream.write(text.encode("utf-8"))
    path.chmod(0o644)


def _resolve(path: str, base: Path) -> str:
    """An absolute path for ``path`` (relative to ``base``); "" stays "" (the built-in phantoms)."""
    return str(resolve_path(path, base)) if path else ""


def _overrides(assignments: list[str] | None) -> dict[str, Any]:
    return parse_assignments(assignments, "learning-rate=0.0005")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(seed) for seed in text.split(",") if seed.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None


def _run_one(args: argparse.Namespace) -> int:
    site_config = _resolve(args.site_config, Path.cwd()) if args.site_config else ""
    if site_config and not Path(site_config).is_file():
        raise ConfigError(f"--site-config {args.site_config}: file not found; name a site config YAML")
    dataset = args.dataset or (Path(site_config).stem if site_config else "phantoms")
    try:
        entry = _entry_from(args, site_config, dataset)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = str(error["loc"][0]).replace("_", "-")
        raise ConfigError(f"--{option} {error['input']!r}: {error['msg']}") from None
    folder = reproductions_folder() / entry.name
    _reproduce(entry, Path.cwd())
    print((folder / "results.md").read_text())
    print(f"results: {folder / 'results.json'} and results.md")
    return 0


def _entry_from(args: argparse.Namespace, site_config: str, dataset: str) -> _Entry:
    return _Entry(
        name=args.name or f"{dataset.lower()}-{args.model}-{args.image_size}",
        dataset=dataset,
        site_config=site_config,
        model=args.model,
        image_size=args.image_size,
        seeds=_seeds(args.seeds),
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        modes=tuple(args.modes.split(",")),
        central=not args.no_central,
        overrides=_overrides(args.set),
    )


def load_suite(path: Path) -> _Suite:
    raw = read_yaml(path, "suite file not found; name a suite YAML such as configs/results.yaml")
    try:
        return _Suite.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{path}: {where}: {error['msg']}") from None


def _preamble(command: str) -> str:
    return "\n".join(
        [
            "# Results: the paper's Tables 1-3, federated, on real data",
            "",
            (
                f"Made by `{command}` (page written {datetime.now(UTC):%Y-%m-%d}; each section says where its "
                "cells were trained). Each reproduction trains every mode (the plaintext baselines: plaintext only) "
                "on the same three sites, split from the dataset with a seeded Dirichlet split, in a Flower "
                "simulation (federated) and on the sites' images pooled (central). Each cell's model is the one "
                "with the best validation macro-F1: federated, of the rounds (the sites' validation images "
                "pooled); central, of the epochs. Accuracy, balanced accuracy and macro-F1 are pooled over every "
                "site's test split; balanced accuracy is the mean recall over the classes, macro-F1 the mean F1. "
                "AUROC is the macro one-vs-rest AUROC: central, of the pooled test images; federated, the sites' "
                "AUROCs averaged by their test images (it does not pool; a site whose test split holds one class has "
                "none); '–' for cells trained before AUROC was reported. An accuracy flagged 'one class only': every "
                "seed's model answered one class for every test image; 'one class: k of n seeds': k seeds' models "
                "did. Spread: mean ± sample standard deviation over seeds."
            ),
        ]
    )


def _run_suite(args: argparse.Namespace) -> int:
    path = args.suite.resolve()
    suite = load_suite(path)
    sections: list[Section] = []
    for entry in suite.reproductions:
        print(f"== {entry.name}: {entry.dataset}, {entry.model}, {entry.image_size} px", flush=True)
        if args.report_only:
            folder = reproductions_folder() / entry.name
            if not (folder / "results.json").is_file():
                print(f"{entry.name}: not run yet, left out of the page")
                continue
            results = load_plan_results(entry.to_plan(path.parent), stale_ok=True)
            if results.get("stale"):
                print(f"{entry.name}: made with earlier settings ({', '.join(results['stale'])}); shown as made")
        else:
            results = _reproduce(entry, path.parent)
        sections.append(Section(entry.dataset, results, entry.published))
    if not sections:
        raise ConfigError(
            f"{path}: no reproduction has finished cells under {reproductions_folder()}; "
            "run the suite without --report-only first"
        )
    notes = ""
    if suite.notes:
        notes_file = Path(_resolve(suite.notes, path.parent))
        if not notes_file.is_file():
            raise ConfigError(f"{path}: notes: {notes_file} not found; write it or remove the key")
        notes = notes_file.read_text(encoding="utf-8")
    output = Path(args.output or _resolve(suite.output, path.parent))
    command = "fesf-reproduce suite " + shlex.quote(str(args.suite))
    _write_text(output, results_markdown(sections, _preamble(command), notes))
    print(f"written: {output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fesf-reproduce",
        description="Reproduce the paper's Tables 1-3: every training mode, federated and central, over seeds.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one dataset and model, every mode")
    run.add_argument("--site-config", default="", help="the dataset's site config YAML (default: built-in phantoms)")
    run.add_argument("--dataset", default="", help="the dataset's name in the tables, e.g. Br35H (default: the file's)")
    run.add_argument("--model", default="smallcnn", help="classifier (default smallcnn)")
    run.add_argument("--image-size", type=int, default=64, help="image size in px (default 64)")
    run.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    run.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    run.add_argument("--local-epochs", type=int, default=2, help="local epochs per round (default 2)")
    run.add_argument("--modes", default=",".join(TRAINING_MODES), help="modes to train (default: all four)")
    run.add_argument("--no-central", action="store_true", help="skip the central reference")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any other run-config key, e.g. site.iqem.steps=300"
    )
    run.add_argument("--name", default="", help="folder under $FESF_HOME/reproductions (default: dataset-model-size)")
    run.set_defaults(handler=_run_one)
    suite = commands.add_parser("suite", help="every reproduction of a suite file, then the results page")
    suite.add_argument("suite", type=Path, help="suite YAML, e.g. configs/results.yaml")
    suite.add_argument("--output", type=Path, default=None, help="results page (default: the suite's output)")
    suite.add_argument(
        "--report-only", action="store_true", help="run nothing: write the page from the cells finished so far"
    )
    suite.set_defaults(handler=_run_suite)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(
        lambda: args.handler(args), "interrupted: finished cells are kept; run the same command to go on"
    )


if __name__ == "__main__":
    sys.exit(main())
