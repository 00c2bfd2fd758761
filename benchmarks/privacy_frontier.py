"""The privacy-utility frontier: linkage success against macro-F1 retention, one point per surrogate setting.

For each point (a named set of site-config overrides, below) it measures, on the
configured site's data:

- **privacy**: ``fesf audit``'s linkage attack (top-1 re-identification against chance)
  and its retrieval, in the audit ``<config>-<size>px-<point>`` under ``$FESF_HOME/audits``;
- **utility**: a central smallcnn trained on the site's x_su' (its own training split,
  the epoch chosen on validation), its test macro-F1 divided by that of the same model
  trained on the plaintexts in the same run: the retention the paper reports.

Every finished point is stored in ``--results`` (JSON, written atomically) and reused by a
rerun, so an interrupted frontier resumes. ``--plot`` draws the points (needs matplotlib:
``pip install -e '.[figures]'``).

    OMP_NUM_THREADS=2 python benchmarks/privacy_frontier.py configs/br35h.yaml --image-size 64 \\
        --results docs/privacy-frontier.json --plot docs/privacy-frontier.png
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fesf_fed: run from anywhere

import argparse
import json
import time
from typing import Any

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.audit.run import LINKAGE_GOAL, run_audit
from fesf_fed.central import train_central
from fesf_fed.config import SiteConfig, load_config
from fesf_fed.device import select_device
from fesf_fed.errors import ConfigError, run_command
from fesf_fed.task import Evaluation
from fesf_fed.training_data import load_site_data

#: The settings on the frontier: the paper's, each defence alone, and combinations.
POINTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "beta-0.1": {"pipeline.beta": 0.1, "pipeline.refine_beta": 0.0},
    "beta-0.1-4096-hosts": {"pipeline.beta": 0.1, "pipeline.refine_beta": 0.0, "hosts.phantom_count": 4096},
    "noise-1": {"pipeline.amplitude_noise": 1.0},
    "noise-2": {"pipeline.amplitude_noise": 2.0},
    "noise-3": {"pipeline.amplitude_noise": 3.0},
    "noise-2-4096-hosts": {"pipeline.amplitude_noise": 2.0, "hosts.phantom_count": 4096},
    "beta-0.05-4096-hosts": {"pipeline.beta": 0.05, "pipeline.refine_beta": 0.0, "hosts.phantom_count": 4096},
    "beta-0.02-4096-hosts": {"pipeline.beta": 0.02, "pipeline.refine_beta": 0.0, "hosts.phantom_count": 4096},
    "beta-0.01-4096-hosts": {"pipeline.beta": 0.01, "pipeline.refine_beta": 0.0, "hosts.phantom_count": 4096},
    "alpha-0.1-4096-hosts": {"pipeline.alpha": 0.1, "pipeline.refine_alpha": 0.1, "hosts.phantom_count": 4096},
    "alpha-0.05-4096-hosts": {"pipeline.alpha": 0.05, "pipeline.refine_alpha": 0.05, "hosts.phantom_count": 4096},
    "alpha-0.1-beta-0.1-4096-hosts": {
        "pipeline.alpha": 0.1,
        "pipeline.refine_alpha": 0.1,
        "pipeline.beta": 0.1,
        "pipeline.refine_beta": 0.0,
        "hosts.phantom_count": 4096,
    },
    "alpha-0.05-beta-0.1-4096-hosts": {
        "pipeline.alpha": 0.05,
        "pipeline.refine_alpha": 0.05,
        "pipeline.beta": 0.1,
        "pipeline.refine_beta": 0.0,
        "hosts.phantom_count": 4096,
    },
    "alpha-0.05-beta-0.05-4096-hosts": {
        "pipeline.alpha": 0.05,
        "pipeline.refine_alpha": 0.05,
        "pipeline.beta": 0.05,
        "pipeline.refine_beta": 0.0,
        "hosts.phantom_count": 4096,
    },
    "alpha-0.05-beta-0.02-4096-hosts": {
        "pipeline.alpha": 0.05,
        "pipeline.refine_alpha": 0.05,
        "pipeline.beta": 0.02,
        "pipeline.refine_beta": 0.0,
        "hosts.phantom_count": 4096,
    },
    "alpha-0.05-beta-0.01-4096-hosts": {
        "pipeline.alpha": 0.05,
        "pipeline.refine_alpha": 0.05,
        "pipeline.beta": 0.01,
        "pipeline.refine_beta": 0.0,
        "hosts.phantom_count": 4096,
    },
}

#: The central training of every point: the reproduction's Br35H schedule (10 rounds of 4 epochs).
EPOCHS, LEARNING_RATE, BATCH_SIZE = 40, 1e-3, 8


def central_test(config: SiteConfig, mode: str, seed: int) -> Evaluation:
    """Test figures of a central smallcnn trained on the site's ``mode`` images (the epoch chosen on validation)."""
    data = load_site_data(config, mode)
    result = train_central(
        data,
        model_name="smallcnn",
        epochs=EPOCHS,
        lr=LEARNING_RATE,
        batch_size=BATCH_SIZE,
        seed=seed,
        device=select_device(config.device),
    )
    return result.test


def macro_f1(config: SiteConfig, mode: str, seed: int) -> float:
    """Test macro-F1 of a central smallcnn trained on the site's ``mode`` images."""
    return float(central_test(config, mode, seed).f1)


def measure(config_path: Path, image_size: int, point: str, seed: int) -> dict[str, Any]:
    """One point: its linkage and retrieval figures and its x_su' macro-F1."""
    config = load_config(config_path, command_line={"data.image_size": image_size, **POINTS[point]})
    start = time.perf_counter()
    name = f"{config_path.stem}-{image_size}px-{point}"
    report, _ = run_audit(config, name, ["linkage", "retrieval"], progress=False)
    audited = time.perf_counter()
    figures = {result.attack: result for result in report.attacks}
    linkage = figures["linkage"]
    return {
        "settings": POINTS[point],
        "linkage_top1": linkage.figures["top1"],
        "linkage_top1_over_chance": linkage.figures["top1_over_chance"],
        "linkage_top5": linkage.figures["top5"],
        "candidates": report.scenario["victim_images"],
        "retrieval_ssim_scan_held_elsewhere": figures["retrieval"].figures["ssim_scan_held_elsewhere"],
        "f1_x_su_prime": macro_f1(config, "x_su_prime", seed),
        "seconds_audit": audited - start,
        "seconds_utility": time.perf_counter() - audited,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Linkage top-1 / chance (log scale) against macro-F1 retention, the goal and the paper's retention as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install -e '.[figures]'") from None
    baseline = results["plaintext_f1"]
    figure, axes = plt.subplots(figsize=(9, 6), dpi=120)
    for name, point in results["points"].items():
        retention, times = point["f1_x_su_prime"] / baseline, point["linkage_top1_over_chance"]
        chosen = name == results.get("recommended")
        axes.scatter(
            retention,
            times,
            s=160 if chosen else 30,
            marker="*" if chosen else "o",
            zorder=3,
            color="tab:red" if chosen else ("black" if name == "paper" else "tab:blue"),
        )
        label = name + (" (recommended setting)" if chosen else " (the paper's settings)" if name == "paper" else "")
        axes.annotate(label, (retention, times), textcoords="offset points", xytext=(5, 3), fontsize=7)
    axes.axhline(LINKAGE_GOAL, linestyle="--", color="grey")
    axes.text(
        axes.get_xlim()[0],
        LINKAGE_GOAL * 1.1,
        f" goal: top-1 at most {LINKAGE_GOAL:.0f}x chance",
        fontsize=8,
        color="grey",
    )
    if "paper" in results["points"]:
        axes.axvline(results["points"]["paper"]["f1_x_su_prime"] / baseline, linestyle=":", color="grey")
    axes.set_yscale("log")
    axes.set_xlabel("macro-F1 retention (x_su' / plaintext, central smallcnn, test split)")
    axes.set_ylabel("linkage top-1 / chance (log scale; 1 = chance)")
    axes.set_title(results["title"], fontsize=10)
    figure.tight_layout()
    with atomic_writer(path) as stream:
        figure.savefig(stream, format="png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the site config, e.g. configs/br35h.yaml")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--points", default=",".join(POINTS), help="comma-separated: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="the central training's seed")
    parser.add_argument("--results", type=Path, required=True, help="JSON file the points are kept in (resumed)")
    parser.add_argument("--recommended", help="the recommended point, marked on the plot")
    parser.add_argument("--plot", type=Path, help="write the frontier as a PNG")
    args = parser.parse_args(argv)

    def command() -> int:
        chosen = [point.strip() for point in args.points.split(",") if point.strip()]
        unknown = [point for point in chosen if point not in POINTS]
        if unknown:
            raise ConfigError(f"--points {unknown[0]!r}: unknown; choose from {', '.join(POINTS)}")
        results: dict[str, Any] = json.loads(args.results.read_text()) if args.results.exists() else {}
        results.setdefault("points", {})
        results["title"] = f"{args.config.stem}, {args.image_size} px: privacy-utility frontier"
        if "plaintext_f1" not in results:
            base = load_config(args.config, command_line={"data.image_size": args.image_size})
            results["plaintext_f1"] = macro_f1(base, "plaintext", args.seed)
            write_json(args.results, results)
        for point in chosen:
            if point not in results["points"]:
                results["points"][point] = measure(args.config, args.image_size, point, args.seed)
                write_json(args.results, results)
            figures = results["points"][point]
            print(
                f"{point:24s} linkage top-1 {figures['linkage_top1']:.3f} ({figures['linkage_top1_over_chance']:.0f}x chance) "
                f"x_su' macro-F1 {figures['f1_x_su_prime']:.3f} retention "
                f"{figures['f1_x_su_prime'] / results['plaintext_f1']:.3f}",
                flush=True,
            )
        print(f"plaintext macro-F1 {results['plaintext_f1']:.3f}")
        if args.recommended:
            results["recommended"] = args.recommended
            write_json(args.results, results)
        if args.plot:
            plot(results, args.plot)
        return 0

    return run_command(command, "interrupted: finished points are kept in --results; run again to resume")


if __name__ == "__main__":
    sys.exit(main())
