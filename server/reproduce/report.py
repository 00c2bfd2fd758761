"""Markdown tables of reproductions, beside the paper's figures (Tables 1-3)."""

import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fesf_fed.federation.protocol import TEST_EXAMPLES
from fesf_fed.quality import QUALITY_PAIRS
from fesf_fed.recipe import Recipe
from fesf_fed.task import classification_figures, one_class_answer

from .experiment import cell_key, results_recipe
from .paper import PAPER_MEAN_RATIO, paper_quality

#: How the table names each training mode (the paper's symbols).
MODE_LABELS = {"plaintext": "x_pl (plaintext)", "x_sy": "x_sy", "x_su": "x_su", "x_su_prime": "x_su'"}
#: The figures the tables give, by their key in a cell, with their column names.
FIGURES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1": "macro-F1", "auroc": "AUROC"}
#: The figures whose share of plaintext's (same seed) the tables give. Not AUROC: chance is 0.5, not 0.
RETAINED = ("accuracy", "balanced_accuracy", "f1")
#: The target: x_su' keeps at least this share of plaintext macro-F1, federated, averaged over the datasets.
F1_TARGET = 0.97
#: The target of a plaintext baseline: federated accuracy at most this far below central.
FEDERATED_GAP = 0.03


class Published(BaseModel):
    """A published plaintext test figure that a baseline entry is held against (``published`` in a suite file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Where the figures come from, e.g. "MedMNIST v2, ResNet-18 (28)".
    source: str
    accuracy: float = Field(ge=0, le=1)
    auroc: float | None = Field(None, ge=0, le=1)


class Section(NamedTuple):
    """One reproduction on the results page: the dataset's name, its results, and published figures if any.

    A section with ``published`` is a plaintext baseline: it has its own table and stays out of the summary.
    """

    dataset: str
    results: dict[str, Any]
    published: Published | None = None


def _spread(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sample standard deviation`` (just the mean for one value); ``–`` for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _setting_cells(results: dict[str, Any], setting: str) -> list[dict[str, Any]]:
    """The finished cells of a setting (``federated`` or ``central``), every mode."""
    return [cell for key, cell in results["cells"].items() if key.startswith(setting + "/")]


def _cells(results: dict[str, Any], setting: str, mode: str) -> list[dict[str, Any]]:
    """The finished cells of a setting and mode, in the plan's seed order."""
    cells = results["cells"]
    keys = (cell_key(setting, mode, seed) for seed in results["plan"]["seeds"])
    return [cells[key] for key in keys if key in cells]


def _figure(cell: dict[str, Any], name: str) -> float | None:
    """A cell's figure ``name`` (a key of :data:`FIGURES`); None for an AUROC the cell does not have.

    Cells written before a figure was reported (balanced accuracy) still hold the confusion matrix
    it comes from. AUROC does not come from one: a cell written before it was reported, or whose
    test images held one class, has none.
    """
    if name in cell:
        value: float = cell[name]
        return value
    if name == "auroc":
        return None
    return classification_figures(np.asarray(cell["confusion"]))[name]


def _values(results: dict[str, Any], setting: str, mode: str, name: str) -> list[float]:
    """The figure ``name`` of each finished seed of a setting and mode that has it."""
    return [value for cell in _cells(results, setting, mode) if (value := _figure(cell, name)) is not None]


def ratios(results: dict[str, Any], setting: str, mode: str, metric: str = "accuracy") -> list[float]:
    """Per seed: the mode's ``metric`` (a key of :data:`FIGURES`) over plaintext's with the same seed."""
    cells = results["cells"]
    found = []
    for seed in results["plan"]["seeds"]:
        mine, plain = cells.get(cell_key(setting, mode, seed)), cells.get(cell_key(setting, "plaintext", seed))
        if not (mine and plain):
            continue
        ours, theirs = _figure(mine, metric), _figure(plain, metric)
        if ours is not None and theirs is not None and theirs > 0:
            found.append(ours / theirs)
    return found


def surrogate_quality(results: dict[str, Any]) -> dict[str, float]:
    """SSIM and PSNR of each pair over the sites' quality samples (every mode and seed shares the surrogates).

    A site's figures are its sample's means; they are weighted by the sample's size, at most
    ``quality.max_images`` of the site's test images.
    """
    limit = results["site"]["quality"]["max_images"]
    for cell in results["cells"].values():
        sites = [values for values in cell.get("quality", {}).values() if "ssim-x_pl-x_su_prime" in values]
        if sites:
            weights = [min(site[TEST_EXAMPLES], limit or site[TEST_EXAMPLES]) for site in sites]
            return {
                key: sum(weight * site[key] for weight, site in zip(weights, sites)) / sum(weights)
                for key in sites[0]
                if key.startswith(("ssim-", "psnr-"))
            }
    return {}


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _variant_text(variant: dict[str, float]) -> str:
    return ", ".join(f"{key} {value}" for key, value in variant.items())


def setting_label(results: dict[str, Any]) -> str:
    """What a reproduction trained: model and image size, and its recipe where not the default.

    E.g. "smallcnn_wide, 28 px (recipe: class-weighting none)"; results from before recipes say "(recipe: legacy)".
    """
    label = f"{results['plan']['model']}, {results['dataset']['data']['image_size']} px"
    recipe = results_recipe(results)
    if recipe == Recipe.legacy():
        return f"{label} (recipe: legacy)"
    changes = ", ".join(f"{key} {value}" for key, value in recipe.changes_from(Recipe()).items())
    return f"{label} (recipe: {changes})" if changes else label


def majority_share(cell: dict[str, Any]) -> float:
    """The accuracy of always answering the test set's largest class: what a model that learned nothing scores."""
    confusion = cell["confusion"]
    return max(sum(row) for row in confusion) / max(sum(map(sum, confusion)), 1)


def _one_class_count(cells: list[dict[str, Any]]) -> int:
    """How many of the cells' models answered one class for every test image."""
    return sum(one_class_answer(cell["confusion"]) is not None for cell in cells)


def _all_one_class(cells: list[dict[str, Any]]) -> bool:
    """Whether there are cells and every one's model answered one class for every test image."""
    return bool(cells) and _one_class_count(cells) == len(cells)


def _one_class_flag(cells: list[dict[str, Any]]) -> str:
    """`` (one class only)`` when every seed's model answered one class, `` (one class: k of n seeds)`` when some did."""
    count = _one_class_count(cells)
    if not count:
        return ""
    if count == len(cells):
        return " (one class only)"
    return f" (one class: {count} of {len(cells)} seeds)"


def _scores(results: dict[str, Any], setting: str, mode: str) -> list[str]:
    """Table cells, one per :data:`FIGURES`; accuracy is flagged when any seed's model answered one class only."""
    flag = _one_class_flag(_cells(results, setting, mode))
    spreads = [_spread(_values(results, setting, mode, name)) for name in FIGURES]
    return [spreads[0] + flag, *spreads[1:]]


def _shortfall(value: float, goal: float) -> str:
    """``met`` when ``value`` reaches ``goal``, else ``short by`` the gap."""
    gap = goal - value
    if gap <= 0:
        return "met"
    return "short by < 0.001" if gap < 0.0005 else f"short by {gap:.3f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _mean_seconds(results: dict[str, Any], setting: str) -> float | None:
    """The mean seconds of a setting's finished cells (every mode); None when it has none."""
    seconds = [cell["seconds"] for cell in _setting_cells(results, setting)]
    return statistics.mean(seconds) if seconds else None


def headline(results: dict[str, Any]) -> str:
    """One sentence: the share of plaintext accuracy x_su' keeps, and SSIM(x_pl, x_su').

    A plaintext baseline (plaintext its only mode): its plaintext accuracy, federated and central.
    """
    if list(results["plan"]["modes"]) == ["plaintext"]:
        text = (
            "Plaintext baseline (no surrogate mode trained): plaintext accuracy "
            f"{_spread(_values(results, 'federated', 'plaintext', 'accuracy'))} federated"
        )
        if results["plan"]["central"]:
            text += f", {_spread(_values(results, 'central', 'plaintext', 'accuracy'))} central"
        return text + "."
    if "x_su_prime" not in results["plan"]["modes"]:
        return "x_su' was not trained in this reproduction."
    federated = ratios(results, "federated", "x_su_prime")
    central = ratios(results, "central", "x_su_prime")
    ssim = surrogate_quality(results).get("ssim-x_pl-x_su_prime")
    parts = [f"x_su' keeps {_spread(federated)} of plaintext accuracy federated"]
    if central:
        parts.append(f"{_spread(central)} central")
    text = ", ".join(parts)
    if ssim is not None:
        text += f", at SSIM(x_pl, x_su') {ssim:.4f}"
    cells = [cell for key, cell in results["cells"].items() if "/x_su_prime/" in key]
    if _all_one_class(cells):
        text += f"; but every x_su' model answered one class only (majority share {majority_share(cells[0]):.3f})"
    elif count := _one_class_count(cells):
        text += f"; but {count} of {len(cells)} x_su' models answered one class only"
    if results.get("variant"):
        text += f" (**changed hyper-parameters: {_variant_text(results['variant'])}**; not the headline figure)"
    return text + "."


def _hosts_text(site: dict[str, Any]) -> str:
    """Where a reproduction's hosts came from, for its settings line."""
    hosts = site.get("hosts", {})
    if hosts.get("source") == "dataset":
        share = site["data"]["public_hosts"]
        return f"; hosts: the dataset's public host part ({share:.0%} of it, set aside, never trained or tested on)"
    if hosts.get("source") == "phantom":
        return f"; hosts: {hosts['phantom_count']} generated head phantoms (a variant: not the task's domain)"
    return "; hosts: a folder of public images" if hosts.get("source") == "folder" else ""


def reproduction_markdown(results: dict[str, Any], dataset: str) -> str:
    """One reproduction's section: its settings, Table 1 (figures and plaintext's share kept), Tables 2-3, time."""
    plan = results["plan"]
    pipeline = results["site"]["pipeline"]
    planned = len(plan["seeds"]) * len(plan["modes"]) * (2 if plan["central"] else 1)
    done = "" if len(results["cells"]) == planned else f" **{len(results['cells'])} of {planned} cells finished.**"
    central = f", {plan['rounds'] * plan['local_epochs']} epochs central" if plan["central"] else ""
    environment = results.get("environment", {})
    official = "; each site's images in MedMNIST's official train/val/test parts" if _official(results) else ""
    surrogates = any(mode != "plaintext" for mode in plan["modes"])
    strengths = (
        f"; IHM alpha {pipeline['alpha']}, beta {pipeline['beta']}, alpha' {pipeline['refine_alpha']}, "
        f"beta' {pipeline['refine_beta']}" + _hosts_text(results["site"])
        if surrogates
        else ""
    )
    stale = results.get("stale")
    lines = [
        f"### {dataset}: {setting_label(results)}",
        "",
        (
            f"`{plan['name']}`: 3 sites (Dirichlet split{official}), {plan['rounds']} rounds x "
            f"{plan['local_epochs']} local epochs "
            f"federated{central}; seeds {', '.join(map(str, plan['seeds']))}; "
            f"trained from {environment.get('date', '?')} on {environment.get('device', '?')}{strengths}.{done}"
        ),
        "",
        *(
            [
                f"**Made with earlier settings than the suite's ({', '.join(stale)}): rerun it to refresh these figures.**",
                "",
            ]
            if stale
            else []
        ),
        f"**{headline(results)}**",
        "",
    ]
    settings = ("federated", "central")
    rows = [
        [MODE_LABELS[mode], *(cell for setting in settings for cell in _scores(results, setting, mode))]
        for mode in plan["modes"]
    ]
    lines += _table(["trained on", *(f"{setting} {label}" for setting in settings for label in FIGURES.values())], rows)
    retained = [
        [
            f"{MODE_LABELS[mode]} / x_pl",
            *(_spread(ratios(results, setting, mode, name)) for setting in settings for name in RETAINED),
        ]
        for mode in plan["modes"]
        if mode != "plaintext"
    ]
    if retained:
        lines += [
            "",
            "Share of plaintext's figure kept, seed by seed (the mode's over plaintext's with the same seed):",
            "",
        ]
        lines += _table(
            ["trained on / plaintext", *(f"{setting} {FIGURES[name]}" for setting in settings for name in RETAINED)],
            retained,
        )
    quality = surrogate_quality(results)
    if quality:
        lines += [
            "",
            "Surrogate quality over the sites' quality samples (at most quality.max_images test images each;",
            "the paper's Tables 2 and 3):",
            "",
        ]
        quality_rows = []
        for label, reference, stage in QUALITY_PAIRS:
            if f"ssim-{reference}-{stage}" not in quality:  # results from before the pair was measured
                continue
            paper = paper_quality(dataset, reference, stage)
            quality_rows.append(
                [
                    label,
                    f"{quality[f'ssim-{reference}-{stage}']:.4f}",
                    f"{quality[f'psnr-{reference}-{stage}']:.2f}",
                    "–" if paper is None else f"{paper[0]:.4f}",
                    "–" if paper is None or paper[1] is None else f"{paper[1]:.2f}",
                ]
            )
        lines += _table(["pair", "SSIM", "PSNR (dB)", "paper SSIM", "paper PSNR (dB)"], quality_rows)
    seconds = {
        setting: sum(cell["seconds"] for cell in _setting_cells(results, setting))
        for setting in ("federated", "central")
    }
    per_cell = {
        setting: "" if (mean := _mean_seconds(results, setting)) is None else f"{_minutes(mean)} per cell"
        for setting in ("federated", "central")
    }
    if surrogates:
        federated_note = "; ".join(
            filter(None, [per_cell["federated"], "the first surrogate mode includes building the surrogates"])
        )
    else:
        federated_note = per_cell["federated"]
    first = plan["seeds"][0]
    runs = [results["cells"].get(cell_key("federated", mode, first), {}).get("run") for mode in plan["modes"]]
    chosen = _chosen_models(results)
    lines += [
        "",
        *([chosen, ""] if chosen else []),
        (
            f"Time: {_hours(seconds['federated'])} federated"
            + (f" ({federated_note})" if federated_note else "")
            + f", {_hours(seconds['central'])} central"
            + (f" ({per_cell['central']})" if per_cell["central"] else "")
            + "; majority-class share of the test images: "
            f"{majority_share(next(iter(results['cells'].values()))) if results['cells'] else 0:.3f}. "
            f"In the dashboard: `/compare?runs={','.join(run for run in runs if run)}` (seed {first})."
        ),
        "",
    ]
    return "\n".join(lines)


def _official(results: dict[str, Any]) -> bool:
    """Whether the sites use the MedMNIST file's own train/val/test parts (``data.split`` official).

    The plan's ``site.data.split`` run-config key sets it where the dataset's config leaves it unset
    (a ``site.`` key only fills unset fields, and a plan may not override one the config sets).
    """
    split = results["plan"].get("overrides", {}).get("site.data.split", results["dataset"]["data"].get("split"))
    return bool(split == "official")


def _chosen_models(results: dict[str, Any]) -> str:
    """One sentence: where the cells' models lie (the round, or epoch, of the best validation macro-F1); "" if unknown."""
    plan = results["plan"]
    parts = []
    for setting, key, unit, last in (
        ("federated", "round", "round", plan["rounds"]),
        ("central", "epoch", "epoch", plan["rounds"] * plan["local_epochs"]),
    ):
        cells = _setting_cells(results, setting)
        found = [cell[key] for cell in cells if cell.get(key) is not None]
        if found:
            some = "" if len(found) == len(cells) else f" ({len(found)} of its {len(cells)} cells record it)"
            parts.append(f"{setting} at {unit} {statistics.mean(found):.1f} of {last} on average{some}")
    if not parts:
        return ""
    return f"Models chosen by validation macro-F1: {', '.join(parts)}."


def _gap_text(gaps: list[float]) -> str:
    """The mean of the seeds' federated − central accuracies, against the target (at most :data:`FEDERATED_GAP` below)."""
    if not gaps:
        return "–"
    mean = statistics.mean(gaps)
    if mean > FEDERATED_GAP:
        verdict = "met: above central"
    elif mean >= -FEDERATED_GAP:
        verdict = f"within {FEDERATED_GAP}"
    else:
        verdict = _shortfall(mean, -FEDERATED_GAP)
    return f"{mean:+.3f} ({verdict})"


def _baselines_markdown(sections: Sequence[Section]) -> list[str]:
    """The plaintext baselines against their published figures: a table, one row per section with ``published``."""
    baselines = [
        (section.dataset, section.results, section.published) for section in sections if section.published is not None
    ]
    if not baselines:
        return []
    sources: dict[str, list[str]] = {}
    for dataset, _, published in baselines:
        sources.setdefault(published.source, []).append(dataset)
    cited = (
        next(iter(sources))
        if len(sources) == 1
        else "; ".join(f"{source} ({', '.join(datasets)})" for source, datasets in sources.items())
    )
    rows = []
    for dataset, results, published in baselines:
        plan = results["plan"]
        split = "official split" if _official(results) else f"{results['dataset']['data'].get('split', 'random')} split"
        central = _values(results, "central", "plaintext", "accuracy")
        auroc = _values(results, "central", "plaintext", "auroc")
        federated = _values(results, "federated", "plaintext", "accuracy")
        gaps = [  # federated minus central accuracy, seed by seed
            float(mine["accuracy"]) - float(theirs["accuracy"])
            for seed in plan["seeds"]
            if (mine := results["cells"].get(cell_key("federated", "plaintext", seed)))
            and (theirs := results["cells"].get(cell_key("central", "plaintext", seed)))
        ]
        seconds = [_mean_seconds(results, setting) for setting in ("central", "federated")]
        rows.append(
            [
                dataset,
                f"{setting_label(results)}, {split}",
                _spread(central)
                + _one_class_flag(_cells(results, "central", "plaintext"))
                + (f" ({_shortfall(statistics.mean(central), published.accuracy)})" if central else ""),
                f"{published.accuracy:.3f}",
                _spread(auroc)
                + (
                    f" ({_shortfall(statistics.mean(auroc), published.auroc)})"
                    if auroc and published.auroc is not None
                    else ""
                ),
                "–" if published.auroc is None else f"{published.auroc:.3f}",
                _spread(_values(results, "central", "plaintext", "balanced_accuracy")),
                _spread(_values(results, "central", "plaintext", "f1")),
                _spread(federated) + _one_class_flag(_cells(results, "federated", "plaintext")),
                _gap_text(gaps),
                " / ".join("–" if value is None else _minutes(value) for value in seconds),
            ]
        )
    text = (
        f"Plaintext only, on the datasets' test images, against the published test figures of {cited}. "
        "Targets: central test accuracy and AUROC at or above the published figures ('met', or by how much the "
        f"mean over seeds falls short); federated accuracy (3 sites, Dirichlet split) at most {FEDERATED_GAP} below "
        "central (federated − central: the mean of each seed's difference). Each row's own section below gives "
        "its settings and every figure."
    )
    table = _table(
        [
            "dataset",
            "model",
            "central accuracy",
            "published accuracy",
            "central AUROC",
            "published AUROC",
            "central balanced accuracy",
            "central macro-F1",
            "federated accuracy",
            "federated − central accuracy",
            "time per cell (central / federated)",
        ],
        rows,
    )
    return ["## Plaintext baselines against published figures", "", text, "", *table, ""]


def _f1_target(per_dataset: dict[str, list[float]]) -> str:
    """The x_su' macro-F1 retention (federated) against :data:`F1_TARGET`: the mean over datasets, then each's."""
    means = {dataset: statistics.mean(found) for dataset, found in per_dataset.items() if found}
    if not means:
        return ""
    mean = statistics.mean(means.values())
    each = ", ".join(f"{dataset} {value:.3f} ({_shortfall(value, F1_TARGET)})" for dataset, value in means.items())
    return (
        f"Macro-F1, federated: x_su' keeps {mean:.3f} of plaintext macro-F1 on average over the datasets "
        f"(target {F1_TARGET}: {_shortfall(mean, F1_TARGET)}); per dataset, the mean of its seeds: {each}."
    )


def _mean_over_datasets(sections: Sequence[Section]) -> str:
    """The headline: x_su' accuracy over plaintext's, averaged over the datasets run with the paper's IHM strengths.

    Each dataset counts once, with the mean of its seeds' ratios (of all its reproductions). Then the same for
    macro-F1, federated, against :data:`F1_TARGET`. Plaintext baselines train no x_su' and count for nothing.
    """
    headline_sections = [
        section for section in sections if not section.results.get("variant") and section.published is None
    ]
    means = {}
    for setting in ("federated", "central"):
        per_dataset: dict[str, list[float]] = {}
        for dataset, results, _ in headline_sections:
            per_dataset.setdefault(dataset, []).extend(ratios(results, setting, "x_su_prime"))
        means[setting] = {dataset: statistics.mean(found) for dataset, found in per_dataset.items() if found}
    f1: dict[str, list[float]] = {}
    for dataset, results, _ in headline_sections:
        f1.setdefault(dataset, []).extend(ratios(results, "federated", "x_su_prime", "f1"))
    if not means["federated"]:
        return "Ours: no x_su' cell with the paper's IHM strengths has finished yet."
    text = (
        f"Ours, with the paper's IHM strengths, averaged over the datasets ({', '.join(means['federated'])}): "
        f"x_su' keeps {statistics.mean(means['federated'].values()):.3f} of plaintext accuracy federated"
    )
    if means["central"]:
        text += f", {statistics.mean(means['central'].values()):.3f} central"
        if means["central"].keys() != means["federated"].keys():
            text += f" ({', '.join(means['central'])})"
    f1_line = _f1_target(f1)
    return text + "." + (f"\n\n{f1_line}" if f1_line else "")


def results_markdown(sections: Sequence[Section], preamble: str, notes: str) -> str:
    """The whole results page: the plaintext baselines, a summary table of the other reproductions, every
    reproduction's section, then ``notes``."""
    rows = []
    for dataset, results, published in sections:
        if published is not None:
            continue
        quality = surrogate_quality(results)
        rows.append(
            [
                dataset,
                setting_label(results) + (f" ({_variant_text(results['variant'])})" if results.get("variant") else ""),
                *_scores(results, "federated", "plaintext"),
                *_scores(results, "federated", "x_su_prime"),
                _spread(ratios(results, "federated", "x_su_prime")),
                _spread(ratios(results, "central", "x_su_prime")),
                _spread(ratios(results, "federated", "x_su_prime", "balanced_accuracy")),
                _spread(ratios(results, "federated", "x_su_prime", "f1")),
                f"{quality['ssim-x_pl-x_su_prime']:.4f}" if quality else "–",
            ]
        )
    summary = (
        _table(
            [
                "dataset",
                "model",
                *(f"plaintext {label} (federated)" for label in FIGURES.values()),
                *(f"x_su' {label} (federated)" for label in FIGURES.values()),
                "accuracy: x_su' / plaintext, federated",
                "accuracy: x_su' / plaintext, central",
                "balanced accuracy: x_su' / plaintext, federated",
                "macro-F1: x_su' / plaintext, federated",
                "SSIM(x_pl, x_su')",
            ],
            rows,
        )
        if rows
        else ["No reproduction of the surrogate modes has finished yet."]
    )
    paper = f"The paper: x_su' keeps about {PAPER_MEAN_RATIO} of plaintext accuracy on average over its datasets."
    body = [preamble.rstrip(), "", *_baselines_markdown(sections)]
    body += ["## Summary", "", *summary, "", _mean_over_datasets(sections), "", paper]
    body += ["", "## Per dataset", ""]
    body += [reproduction_markdown(section.results, section.dataset) for section in sections]
    return "\n".join(body).rstrip() + "\n\n" + notes.strip() + "\n"
