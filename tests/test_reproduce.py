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
from fesf_fed.config import load_config
from fesf_fed.recipe import Recipe
from fesf_fed.task import classification_figures
from server.reproduce.cli import load_suite, main
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
            ["--site-config", "configs/br35h.yaml", "--set", "site.iqem.steps=5"],
            "--set site.iqem.steps: " + str(Path("configs/br35h.yaml").resolve()) + " sets iqem.steps itself",
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
    for entry in suite.reproductions:
        pipeline = load_config(path.parent / entry.site_config).pipeline
        if (pipeline.alpha, pipeline.beta, pipeline.refine_alpha, pipeline.refine_beta) == (0.5, 0.5, 0.5, 0.1):
            paper_strengths.append(entry.dataset)
    # Each shared dataset once with the paper's IHM strengths; other entries are analysis rows.
    assert sorted(paper_strengths) == ["Br35H", "BreastMNIST", "PneumoniaMNIST", "RetinaMNIST"]


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
