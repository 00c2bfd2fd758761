"""`fesf-reproduce` end to end on tiny phantoms: federated and central cells, tables, resume, the suite page."""

import contextlib
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

import server.reproduce.experiment as experiment_module
import server.reproduce.report as report_module
from fesf_fed.config import SiteConfig, load_config
from fesf_fed.errors import ConfigError
from fesf_fed.recipe import Recipe
from fesf_fed.task import classification_figures
from server.reproduce.cli import load_suite, main
from server.reproduce.report import Published
from tests.conftest import TINY_BUILD

#: Two modes (plaintext is the reference), one seed, one round: two real simulations.
SITE_KEYS = {f"site.{key}": value for key, value in TINY_BUILD.items() if key != "data.image_size"}
PLAN_FLAGS = [
    "--name",
    "tiny",
    "--dataset",
    "Phantoms",
    "--image-size",
    "16",
    "--seeds",
    "0",
    "--rounds",
    "1",
    "--local-epochs",
    "1",
    "--modes",
    "plaintext,x_su_prime",
    *[flag for key, value in SITE_KEYS.items() for flag in ("--set", f"{key}={value}")],
]


def _main(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("fesf-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FESF_HOME", str(home))
        code, stdout = _main("run", *PLAN_FLAGS)
    assert code == 0, stdout
    folder = home / "reproductions" / "tiny"
    return home, json.loads((folder / "results.json").read_text()), (folder / "results.md").read_text()


def test_both_modes_are_trained_federated_and_central_and_tabulated(reproduction):
    home, results, markdown = reproduction
    # The --set site.* keys reach the sites wherever the dataset config leaves the field unset.
    assert (results["site"]["iqem"]["steps"], results["site"]["quality"]["max_images"]) == (3, 4)
    cells = results["cells"]
    assert set(cells) == {
        f"{setting}/{mode}/0" for setting in ("federated", "central") for mode in ("plaintext", "x_su_prime")
    }
    for mode in ("plaintext", "x_su_prime"):
        federated = cells[f"federated/{mode}/0"]
        summary = json.loads((home / "runs" / federated["run"] / "summary.json").read_text())
        assert (summary["config"]["mode"], summary["status"]) == (mode, "finished")
        # Pooled over the sites: the figures are those of the summed confusion matrix.
        confusion = np.asarray(summary["final"]["confusion"]["evaluate"])
        assert federated["confusion"] == confusion.tolist()
        figures = classification_figures(confusion)
        assert federated["accuracy"] == pytest.approx(figures["accuracy"])
        assert federated["balanced_accuracy"] == pytest.approx(figures["balanced_accuracy"])
        # AUROC does not pool: federated, the sites' averaged by their test images (summary.json's final).
        assert federated.get("auroc") == summary["final"].get("auroc")
        central = cells[f"central/{mode}/0"]
        assert central["examples"] == federated["examples"] == confusion.sum()  # the same pooled test images
    quality = cells["federated/x_su_prime/0"]["quality"]
    assert set(quality) == {"site-1", "site-2", "site-3"} and "ssim-x_pl-x_su_prime" in quality["site-2"]
    weights = [min(site["test-examples"], 4) for site in quality.values()]  # TINY_BUILD's quality.max_images
    ssim = np.average([site["ssim-x_pl-x_su_prime"] for site in quality.values()], weights=weights)

    ratio = cells["federated/x_su_prime/0"]["accuracy"] / cells["federated/plaintext/0"]["accuracy"]
    assert f"x_su' keeps {ratio:.3f} of plaintext accuracy federated" in markdown
    assert f"SSIM(x_pl, x_su') {ssim:.4f}" in markdown
    plaintext_row = next(line for line in markdown.splitlines() if line.startswith("| x_pl (plaintext)"))
    assert f"{cells['central/plaintext/0']['accuracy']:.3f}" in plaintext_row
    assert f"{cells['federated/plaintext/0']['balanced_accuracy']:.3f}" in plaintext_row
    header = (
        "| federated accuracy | federated balanced accuracy | federated macro-F1 | federated AUROC | central accuracy"
    )
    assert header in markdown
    assert "| x_pl vs x_su' |" in markdown and "changed hyper-parameters" not in markdown
    assert f"/compare?runs={cells['federated/plaintext/0']['run']},{cells['federated/x_su_prime/0']['run']}" in markdown


def test_a_second_start_skips_finished_cells_and_another_plan_is_refused(reproduction, monkeypatch, capsys):
    home, results, _ = reproduction
    monkeypatch.setenv("FESF_HOME", str(home))

    def no_federation(config):
        raise AssertionError(f"finished cells ran again: {config['mode']}")

    monkeypatch.setattr(experiment_module, "simulate", no_federation)
    code, stdout = _main("run", *PLAN_FLAGS)
    assert code == 0 and "[1/4]" not in stdout
    assert json.loads((home / "reproductions" / "tiny" / "results.json").read_text())["cells"] == results["cells"]

    code, _ = _main("run", *PLAN_FLAGS, "--local-epochs", "2")
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "made with other settings (local_epochs)" in error and "--name" in error


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--modes", "x_sy,x_su"], "--modes: include plaintext"),
        (["--modes", "plaintext,x_magic"], "--modes x_magic: choose from plaintext, x_sy, x_su, x_su_prime"),
        (["--seeds", "one"], "--seeds 'one': give whole numbers"),
        (["--site-config", "/no/such.yaml"], "--site-config /no/such.yaml: file not found"),
        (["--model", "alexnet"], "run config model"),
        (["--set", "resume=123"], "--set resume: a reproduction sets this itself"),
        (["--set", "seed=3"], "--set seed: a reproduction sets this itself"),
        (["--seeds", "0,0"], "--seeds [0, 0]: give one or more different seeds"),
        (["--modes", "plaintext,plaintext"], "name each mode once"),
        (["--image-size", "4"], "--image-size 4: Input should be greater than or equal to 8"),
        (
            ["--site-config", "configs/br35h.yaml", "--set", "site.pipeline.beta=0.3"],
            "--set site.pipeline.beta: " + str(Path("configs/br35h.yaml").resolve()) + " sets pipeline.beta itself",
        ),
    ],
)
def test_bad_input_is_one_line(flags, message, capsys):
    code, _ = _main("run", "--name", "bad", *flags)
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_a_suite_writes_the_results_page_from_its_reproductions(reproduction, tmp_path, monkeypatch, capsys):
    home, results, markdown = reproduction
    monkeypatch.setenv("FESF_HOME", str(home))
    (tmp_path / "notes.md").write_text("## Discussion\n\nWhere surrogates lose accuracy.\n")
    entry = {
        "name": "tiny",
        "dataset": "Phantoms",
        "image_size": 16,
        "seeds": [0],
        "rounds": 1,
        "local_epochs": 1,
        "modes": ["plaintext", "x_su_prime"],
        "run_config": SITE_KEYS,
    }
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"output": "page.md", "notes": "notes.md", "reproductions": [entry]}))
    code, _ = _main("suite", str(suite))
    assert code == 0
    page = (tmp_path / "page.md").read_text()
    assert page.startswith("# Results") and "fesf-reproduce suite" in page
    summary_row = next(line for line in page.splitlines() if line.startswith("| Phantoms |"))
    columns = [column.strip() for column in summary_row.strip("|").split("|")]
    ratio = (
        results["cells"]["federated/x_su_prime/0"]["accuracy"] / results["cells"]["federated/plaintext/0"]["accuracy"]
    )
    assert columns[10] == f"{ratio:.3f}"  # x_su' / plaintext accuracy, federated
    assert f"datasets (Phantoms): x_su' keeps {ratio:.3f} of plaintext accuracy federated" in page  # the headline
    assert markdown.strip() in page  # the reproduction's own section
    assert page.rstrip().endswith("Where surrogates lose accuracy.")

    # Interim page: nothing runs, reproductions not started yet are left out.
    later = {**entry, "name": "not-yet", "dataset": "Later"}
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": [entry, later]}))
    code, stdout = _main("suite", str(suite), "--report-only", "--output", str(tmp_path / "interim.md"))
    assert code == 0 and "not-yet: not run yet" in stdout
    interim = (tmp_path / "interim.md").read_text()
    assert summary_row in interim and "| Later |" not in interim

    # The dataset's site config changed since (say, a new default): the page shows the cells as made, and says so.
    real_config = experiment_module.dataset_config

    def changed_config(plan: experiment_module.Plan) -> SiteConfig:
        config = real_config(plan)
        return config.model_copy(update={"audit": config.audit.model_copy(update={"seed": 5})})

    monkeypatch.setattr(experiment_module, "dataset_config", changed_config)
    code, stdout = _main("suite", str(suite), "--report-only", "--output", str(tmp_path / "stale.md"))
    assert code == 0 and "made with earlier settings" in stdout
    stale = (tmp_path / "stale.md").read_text()
    assert "Made with earlier settings than the suite's (the dataset's site config: audit)" in stale
    code, _ = _main("suite", str(suite))  # a run, not a page: the cells would not be the entry's
    assert code == 2 and "made with other settings (the dataset's site config: audit)" in capsys.readouterr().err
    monkeypatch.setattr(experiment_module, "dataset_config", real_config)

    # A suite entry changed since its cells were trained: the page would mislabel them.
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": [{**entry, "rounds": 2}]}))
    code, _ = _main("suite", str(suite), "--report-only")
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "made with other settings (rounds)" in error


def test_a_suite_file_with_an_unknown_key_is_one_line(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"output": "x.md", "reproductions": [{"name": "a", "dataset": "A", "epochs": 3}]}))
    code, _ = _main("suite", str(suite))
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{suite}: reproductions.0.epochs" in error


def test_the_shipped_suite_names_valid_site_configs():
    path = Path(__file__).resolve().parents[1] / "configs" / "results.yaml"
    suite = load_suite(path)
    paper_strengths = []
    baselines: dict[tuple[str, frozenset[tuple[str, object]]], list[str]] = {}
    for entry in suite.reproductions:
        if entry.published:
            # A plaintext baseline: MedMNIST's official split, held against the published figures,
            # with a model and run settings that every baseline of its set shares.
            assert entry.modes == ("plaintext",) and entry.overrides["site.data.split"] == "official"
            baselines.setdefault((entry.model, frozenset(entry.overrides.items())), []).append(entry.dataset)
            continue
        pipeline = load_config(path.parent / entry.site_config).pipeline
        if (pipeline.alpha, pipeline.beta, pipeline.refine_alpha, pipeline.refine_beta) == (0.5, 0.5, 0.5, 0.1):
            paper_strengths.append(entry.dataset)
    # Each shared dataset once with the paper's IHM strengths; other entries are baselines or analysis rows.
    assert sorted(paper_strengths) == ["Br35H", "BreastMNIST", "PneumoniaMNIST", "RetinaMNIST"]
    # Each set of baselines trains every MedMNIST set alike: no per-dataset model or recipe.
    assert [sorted(datasets) for datasets in baselines.values()] == [
        ["BreastMNIST", "PneumoniaMNIST", "RetinaMNIST"]
    ] * len(baselines)


def test_tables_give_balanced_accuracy_and_flag_models_that_answer_one_class():
    # Cells as written before balanced accuracy was reported: the tables derive it from the confusion matrix.
    def cell(confusion: list[list[int]]) -> dict:
        return {**classification_figures(np.asarray(confusion)), "confusion": confusion, "seconds": 60, "run": "r"}

    cells = {"federated/plaintext/0": cell([[7, 1], [2, 6]]), "federated/x_su_prime/0": cell([[8, 0], [8, 0]])}
    for value in cells.values():
        del value["balanced_accuracy"]
    results = {
        "plan": {"name": "hand", "model": "smallcnn", "seeds": [0], "modes": ["plaintext", "x_su_prime"]}
        | {"central": False, "rounds": 1, "local_epochs": 1},
        "site": {"pipeline": {"alpha": 0.5, "beta": 0.5, "refine_alpha": 0.5, "refine_beta": 0.1}}
        | {"quality": {"max_images": 4}},
        "dataset": {"data": {"image_size": 16}},
        "cells": cells,
    }
    markdown = report_module.reproduction_markdown(results, "Hand")
    table = (line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| x_"))
    rows = {columns[0].strip(): [column.strip() for column in columns] for columns in table}
    assert rows["x_pl (plaintext)"][1:3] == ["0.812", f"{(7 / 8 + 6 / 8) / 2:.3f}"]
    assert rows["x_su'"][1:3] == ["0.500 (one class only)", "0.500"]
    # Cells without an AUROC (written before it was reported) show none. The share of plaintext's figures kept:
    # accuracy and balanced accuracy 0.5 / 0.8125, macro-F1 (1/3) / 0.8118.
    assert rows["x_pl (plaintext)"][4] == "–" and rows["x_su' / x_pl"][1:4] == ["0.615", "0.615", "0.411"]
    assert "every x_su' model answered one class only" in markdown


def test_surrogate_quality_weighs_each_site_by_the_images_it_measured():
    def site(ssim: float, test_examples: int) -> dict:
        return {"ssim-x_pl-x_su_prime": ssim, "psnr-x_pl-x_su_prime": 10 * ssim, "test-examples": test_examples}

    # Site 2 measured 200 of its 300 test images (max_images), site 1 all of its 100.
    cell = {"quality": {"site-1": site(0.1, 100), "site-2": site(0.4, 300)}}
    results = {"site": {"quality": {"max_images": 200}}, "cells": {"federated/x_su_prime/0": cell}}
    assert report_module.surrogate_quality(results) == pytest.approx(
        {"ssim-x_pl-x_su_prime": 0.3, "psnr-x_pl-x_su_prime": 3.0}
    )


def test_the_plan_sets_the_image_size_even_where_the_dataset_config_has_its_own(tmp_path):
    dataset = tmp_path / "dataset.yaml"
    dataset.write_text(yaml.safe_dump({"data": {"source": "phantom", "image_size": 48}}))
    plan = experiment_module.Plan(
        name="sized", site_config=str(dataset), model="smallcnn", image_size=16, seeds=(0,), rounds=1, local_epochs=1
    )
    derived = tmp_path / "derived.yaml"
    explicit = experiment_module.dataset_config(plan).model_dump(mode="json", exclude_unset=True)
    derived.write_text(yaml.safe_dump(explicit))  # what reproduce() writes as dataset.yaml
    _, sites = experiment_module.plan_sites(plan, derived)
    assert [site.data.image_size for site in sites] == [16, 16, 16]


def test_a_path_in_a_suite_entrys_site_key_is_relative_to_the_suite_file(tmp_path):
    suite = tmp_path / "suite.yaml"
    entry = {"name": "a", "dataset": "A", "run_config": {"site.quality.lpips_weights": "weights/alexnet.pth"}}
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": [entry]}))
    plan = load_suite(suite).reproductions[0].to_plan(tmp_path)
    assert plan.overrides == {"site.quality.lpips_weights": str(tmp_path / "weights" / "alexnet.pth")}


def test_results_from_before_site_configs_were_kept_still_make_a_page(reproduction, tmp_path, monkeypatch, capsys):
    """results.json of fesf-reproduce before 2026-11-29: a pipeline key, no site; dataset.yaml the whole config."""
    home, results, _ = reproduction
    folder = tmp_path / "home" / "reproductions" / "tiny"
    shutil.copytree(home / "reproductions" / "tiny", folder)
    monkeypatch.setenv("FESF_HOME", str(tmp_path / "home"))
    (folder / "dataset.yaml").write_text(yaml.safe_dump(results["dataset"]))
    entry = {"name": "tiny", "dataset": "Phantoms", "image_size": 16, "seeds": [0], "rounds": 1, "local_epochs": 1}
    entry["modes"] = ["plaintext", "x_su_prime"]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": [{**entry, "run_config": SITE_KEYS}]}))
    old = {key: value for key, value in results.items() if key != "site"} | {"pipeline": results["site"]["pipeline"]}
    (folder / "results.json").write_text(json.dumps(old))
    # Its site. keys never reached the sites, so its cells are not what the entry asks for.
    assert _main("suite", str(suite), "--report-only")[0] == 2
    assert "made when --set site. keys did not reach the sites" in capsys.readouterr().err

    old["plan"]["overrides"] = {}
    (folder / "results.json").write_text(json.dumps(old))
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": [entry]}))
    assert _main("suite", str(suite), "--report-only")[0] == 0
    assert "| Phantoms |" in (tmp_path / "page.md").read_text()

    # Nothing finished at all: the page is left as it is.
    page = (tmp_path / "page.md").read_text()
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": [{**entry, "name": "never"}]}))
    assert _main("suite", str(suite), "--report-only")[0] == 2
    assert "no reproduction has finished cells" in capsys.readouterr().err
    assert (tmp_path / "page.md").read_text() == page


def test_cells_trained_with_another_recipe_are_not_continued(reproduction, tmp_path, monkeypatch, capsys):
    home, results, _ = reproduction
    assert results["recipe"] == asdict(Recipe())
    folder = tmp_path / "home" / "reproductions" / "tiny"
    shutil.copytree(home / "reproductions" / "tiny", folder)
    monkeypatch.setenv("FESF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(experiment_module, "simulate", lambda config: pytest.fail("a cell ran"))
    # From before recipes: none kept, the cells trained with Adam at a constant rate on plain cross-entropy.
    # (Read from the file: another test changes the fixture's dict.)
    stored = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({key: value for key, value in stored.items() if key != "recipe"}))
    code, _ = _main("run", *PLAN_FLAGS)
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "--name" in error
    assert "trained with another recipe (class-weighting 'none', not 'balanced'; augment 'none'" in error


def _hand_cell(correct: int, **figures: float) -> dict:
    """A cell whose model got ``correct`` of 100 test images right (50 of each class); ``figures`` override its own.

    50 right answers: every image was called the first class, a one-class model.
    """
    confusion = [[50, 0], [100 - correct, correct - 50]]
    return {**classification_figures(np.asarray(confusion)), "confusion": confusion, "seconds": 600.0} | figures


def _hand_results(cells: dict[str, dict], modes: list[str], split: str = "random", **extra: object) -> dict:
    """Results as results.json holds them, of three seeds, 10 rounds x 4 local epochs, with ``cells``.

    ``split`` reaches the sites as a suite's baselines set it: a ``site.data.split`` run-config key
    over a dataset config that leaves it at its default.
    """
    return {
        "plan": {"name": "hand", "model": "smallcnn", "seeds": [0, 1, 2], "modes": modes, "central": True}
        | {"rounds": 10, "local_epochs": 4, "overrides": {"site.data.split": split}},
        "site": {"pipeline": {"alpha": 0.5, "beta": 0.5, "refine_alpha": 0.5, "refine_beta": 0.1}}
        | {"quality": {"max_images": 4}},
        "dataset": {"data": {"image_size": 28, "split": "random"}},
        "recipe": asdict(Recipe()),
        "cells": cells,
        **extra,
    }


def _baseline(central: list[int], federated: list[int], aurocs: list[float]) -> dict:
    cells = {
        f"central/plaintext/{seed}": _hand_cell(correct, auroc=auroc)
        for seed, (correct, auroc) in enumerate(zip(central, aurocs, strict=True))
    }
    cells |= {f"federated/plaintext/{seed}": _hand_cell(correct) for seed, correct in enumerate(federated)}
    return _hand_results(cells, ["plaintext"], split="official")


def _surrogates(plain_f1: float, surrogate_f1: list[float]) -> dict:
    """Plaintext and x_su' cells, federated and central; x_su' keeps ``surrogate_f1[seed] / plain_f1`` of macro-F1."""
    cells = {}
    for seed, f1 in enumerate(surrogate_f1):
        for setting in ("federated", "central"):
            cells[f"{setting}/plaintext/{seed}"] = _hand_cell(90, f1=plain_f1)
            cells[f"{setting}/x_su_prime/{seed}"] = _hand_cell(80, f1=f1)
    return _hand_results(cells, ["plaintext", "x_su_prime"])


def _rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The table rows under ``heading`` (up to the next heading), by their first column."""
    section = markdown.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    table = (line.strip("|").split("|") for line in section.splitlines() if line.startswith("| "))
    return {columns[0].strip(): [column.strip() for column in columns] for columns in table}


def test_the_baseline_table_holds_plaintext_to_the_published_figures_and_federated_to_central():
    published = Published(source="MedMNIST v2, ResNet-18 (28)", accuracy=0.863, auroc=0.901)
    # Central accuracy 0.82 (0.043 short of 0.863), AUROC 0.92 (met); federated 0.05 below central (0.02 short).
    short = _baseline([80, 82, 84], [75, 77, 79], [0.90, 0.92, 0.94])
    # Central 0.90 (met), AUROC 0.89 (0.011 short); federated 0.967, above central.
    met = _baseline([90, 90, 90], [94, 100, 96], [0.89, 0.89, 0.89])
    flagged = _baseline([90, 90, 90], [89, 88, 50], [0.95, 0.95, 0.95])
    sections = [
        report_module.Section("Short", short, published),
        report_module.Section("Met", met, published),
        report_module.Section("Flagged", flagged, published),
        report_module.Section("Other", _surrogates(0.8, [0.8, 0.8, 0.8])),
    ]
    page = report_module.results_markdown(sections, "# Results", "")
    assert page.index("## Plaintext baselines against published figures") < page.index("## Summary")
    assert "published test figures of MedMNIST v2, ResNet-18 (28)." in page
    rows = _rows(page, "## Plaintext baselines against published figures")
    assert rows["Short"][1:7] == [
        "smallcnn, 28 px, official split",
        "0.820 ± 0.020 (short by 0.043)",
        "0.863",
        "0.920 ± 0.020 (met)",
        "0.901",
        "0.820 ± 0.020",  # balanced accuracy: both classes have 50 images
    ]
    assert rows["Short"][8:] == ["0.770 ± 0.020", "-0.050 (short by 0.020)", "10.0 min / 10.0 min"]
    assert rows["Met"][2] == "0.900 ± 0.000 (met)" and rows["Met"][4] == "0.890 ± 0.000 (short by 0.011)"
    assert rows["Met"][9] == "+0.067 (met: above central)"
    # One seed of three answered one class: flagged; the mean gap (0.89 + 0.88 + 0.50) / 3 - 0.90 is 0.143 below.
    assert rows["Flagged"][8] == "0.757 ± 0.222 (one class: 1 of 3 seeds)"
    assert rows["Flagged"][9] == "-0.143 (short by 0.113)"
    # Within the target: federated 0.02 below central.
    within = _baseline([90, 90, 90], [88, 88, 88], [0.95, 0.95, 0.95])
    page = report_module.results_markdown([report_module.Section("Within", within, published)], "# Results", "")
    assert _rows(page, "## Plaintext baselines against published figures")["Within"][9] == "-0.020 (within 0.03)"
    # Without a baseline, no such section.
    page = report_module.results_markdown(sections[3:], "# Results", "")
    assert "## Plaintext baselines" not in page


def test_a_reproduction_trained_with_another_recipe_says_how_wherever_it_is_named():
    published = Published(source="MedMNIST v2, ResNet-18 (28)", accuracy=0.863, auroc=0.901)
    plain = _baseline([90, 90, 90], [88, 88, 88], [0.95, 0.95, 0.95])
    plain["recipe"] = dict(sorted((plain["recipe"] | {"class_weighting": "none", "augment": "light"}).items()))
    surrogates = _surrogates(0.8, [0.8, 0.8, 0.8])
    surrogates["recipe"] |= {"class_weighting": "none"}
    sections = [
        report_module.Section("Default", _baseline([90, 90, 90], [88, 88, 88], [0.95, 0.95, 0.95]), published),
        report_module.Section("Plain", plain, published),
        report_module.Section("Other", surrogates),
    ]
    page = report_module.results_markdown(sections, "# Results", "")
    rows = _rows(page, "## Plaintext baselines against published figures")
    assert rows["Default"][1] == "smallcnn, 28 px, official split"
    # In the recipe's own order, whatever order results.json keeps the keys in.
    assert rows["Plain"][1] == "smallcnn, 28 px (recipe: class-weighting none, augment light), official split"
    assert _rows(page, "## Summary")["Other"][1] == "smallcnn, 28 px (recipe: class-weighting none)"
    assert "### Plain: smallcnn, 28 px (recipe: class-weighting none, augment light)\n" in page
    # Results from before recipes trained the legacy way, and say so.
    del plain["recipe"]
    assert report_module.setting_label(plain) == "smallcnn, 28 px (recipe: legacy)"


def test_baselines_stay_out_of_the_summary_and_its_means_and_read_as_baselines():
    published = Published(source="MedMNIST v2, ResNet-18 (28)", accuracy=0.863, auroc=None)
    baseline = _baseline([90, 90, 90], [88, 88, 88], [0.95, 0.95, 0.95])
    for seed, (round_, epoch) in enumerate([(7, 27), (7, 28), (8, 29)]):
        baseline["cells"][f"federated/plaintext/{seed}"]["round"] = round_
        baseline["cells"][f"central/plaintext/{seed}"]["epoch"] = epoch
    sections = [
        report_module.Section("Base", baseline, published),
        report_module.Section("Full", _surrogates(0.8, [0.8, 0.8, 0.8])),
    ]
    page = report_module.results_markdown(sections, "# Results", "")
    summary = _rows(page, "## Summary")
    assert "Full" in summary and "Base" not in summary
    assert "averaged over the datasets (Full): x_su' keeps" in page
    assert _rows(page, "## Plaintext baselines against published figures")["Base"][4:6] == ["0.950 ± 0.000", "–"]
    # Its own section says what it is, and has no surrogate sentence.
    section = page.split("### Base: smallcnn, 28 px\n", 1)[1].split("\n### ", 1)[0]
    assert "**Plaintext baseline (no surrogate mode trained): plaintext accuracy 0.880 ± 0.000 federated" in section
    assert "x_su' keeps" not in section and "IHM" not in section
    assert "MedMNIST's official train/val/test parts" in section
    assert "Models chosen by validation macro-F1: federated at round 7.3 of 10 on average, central at epoch" in section
    assert "central at epoch 28.0 of 40 on average." in section
    assert "Time: 30 min federated (10.0 min per cell), 30 min central (10.0 min per cell);" in section
    # Cells from before the round and epoch were kept: no such sentence.
    assert "Models chosen" not in page.split("### Full: smallcnn, 28 px\n", 1)[1]


def test_a_cell_where_some_seeds_models_answered_one_class_is_flagged():
    results = _surrogates(0.8, [0.8, 0.8, 0.8])
    results["cells"]["federated/x_su_prime/1"] = _hand_cell(50)
    markdown = report_module.reproduction_markdown(results, "Hand")
    rows = _rows("## Hand\n" + markdown, "## Hand")
    assert rows["x_su'"][1] == "0.700 ± 0.173 (one class: 1 of 3 seeds)"
    assert rows["x_pl (plaintext)"][1] == "0.900 ± 0.000" and rows["x_su'"][5] == "0.800 ± 0.000"
    assert "but 1 of 6 x_su' models answered one class only" in markdown


def test_the_macro_f1_target_line_says_how_far_each_dataset_falls_short():
    sections = [
        # x_su' keeps 0.90, 0.92, 0.94 of plaintext macro-F1: 0.92, 0.05 short of 0.97.
        report_module.Section("A", _surrogates(0.8, [0.72, 0.736, 0.752])),
        # 1.00: met.
        report_module.Section("B", _surrogates(0.5, [0.49, 0.5, 0.51])),
        # Changed IHM strengths: an analysis row, not in the mean.
        report_module.Section("A", _surrogates(0.8, [0.4, 0.4, 0.4]) | {"variant": {"refine_beta": 1.0}}),
    ]
    page = report_module.results_markdown(sections, "# Results", "")
    assert (
        "Macro-F1, federated: x_su' keeps 0.960 of plaintext macro-F1 on average over the datasets "
        "(target 0.97: short by 0.010); per dataset, the mean of its seeds: A 0.920 (short by 0.050), B 1.000 (met)."
    ) in page
    sections[0] = report_module.Section("A", _surrogates(0.8, [0.8, 0.8, 0.8]))
    page = report_module.results_markdown(sections, "# Results", "")
    assert "(target 0.97: met); per dataset, the mean of its seeds: A 1.000 (met), B 1.000 (met)." in page


def test_a_suite_entrys_published_figures_reach_the_page(tmp_path, monkeypatch):
    import server.reproduce.cli as cli_module

    monkeypatch.setenv("FESF_HOME", str(tmp_path / "home"))
    for name in ("base", "full"):
        (tmp_path / "home" / "reproductions" / name).mkdir(parents=True)
        (tmp_path / "home" / "reproductions" / name / "results.json").write_text("{}")
    hand = {"base": _baseline([80, 82, 84], [75, 77, 79], [0.9, 0.9, 0.9]), "full": _surrogates(0.8, [0.8] * 3)}
    monkeypatch.setattr(cli_module, "load_plan_results", lambda plan, stale_ok=False: hand[plan.name])
    published = {"accuracy": 0.863, "auroc": 0.901, "source": "MedMNIST v2, ResNet-18 (28)"}
    entries = [
        {"name": "base", "dataset": "Base", "modes": ["plaintext"], "published": published},
        {"name": "full", "dataset": "Full"},
    ]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"output": "page.md", "reproductions": entries}))
    assert _main("suite", str(suite), "--report-only")[0] == 0
    page = (tmp_path / "page.md").read_text()
    rows = _rows(page, "## Plaintext baselines against published figures")
    assert list(rows) == ["dataset", "Base"] and rows["Base"][2] == "0.820 ± 0.020 (short by 0.043)"
    assert "Base" not in _rows(page, "## Summary") and "### Base: smallcnn, 28 px" in page


def test_results_made_before_a_site_config_field_existed_still_resume(reproduction, tmp_path, monkeypatch):
    """A dataset config stored without a field added since (here the audit section and the amplitude noise)."""
    home, _, _ = reproduction
    folder = tmp_path / "home" / "reproductions" / "tiny"
    shutil.copytree(home / "reproductions" / "tiny", folder)
    monkeypatch.setenv("FESF_HOME", str(tmp_path / "home"))
    older = json.loads((folder / "results.json").read_text())
    del older["dataset"]["audit"], older["dataset"]["pipeline"]["amplitude_noise"]
    (folder / "results.json").write_text(json.dumps(older))
    plan = experiment_module.Plan.model_validate(older["plan"])
    assert experiment_module.load_plan_results(plan)["cells"] == older["cells"]

    older["dataset"]["pipeline"]["beta"] = 0.25  # a real change is still refused
    (folder / "results.json").write_text(json.dumps(older))
    with pytest.raises(ConfigError, match="the dataset's site config"):
        experiment_module.load_plan_results(plan)
