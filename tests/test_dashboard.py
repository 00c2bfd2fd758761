"""The dashboard and the diagnosis service: its API on a real finished run, access control, the
read-only store, and a real browser (Debian's headless Chromium driven by Playwright) on a
finished run, on a live one and on privacy audits.

Servers bind to 127.0.0.1 on free ports, and every process a test starts is stopped by its
PID (process group) before the test ends.
"""

import csv
import io
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fesf_fed.audit.result import ATTACKS, AttackResult, AuditReport, CurvePoint, audits_folder
from fesf_fed.deployment.processes import FlowerProcess, flower_env
from fesf_fed.federation import protocol
from fesf_fed.models import build_model
from fesf_fed.progress import SiteProgress, Stage
from fesf_fed.task import classification_figures, one_class_answer
from server.dashboard.access import COOKIE, check_token
from server.dashboard.app import create_app
from server.dashboard.cli import main as dashboard_main
from server.dashboard.diagnosis import DiagnosisService
from server.dashboard.figures import global_figure
from server.dashboard.pages import compare_page, run_page, runs_page
from server.dashboard.runs import RunDetails, final_metrics, list_runs, run_details
from server.liveness import HEARTBEAT_FILE, STALE_SECONDS
from server.run_store import RunFolder, StoredRun, runs_folder
from tests.browser import CHROMIUM, Browser, chromium, dashboard
from tests.conftest import TINY_BUILD, FinishedRun
from tests.simulation import REPO, TINY_RUN, run_config

TOKEN = "t" * 32
PLAIN_RUN = "plaintext-run"


@dataclass(frozen=True)
class Runs:
    """A folder with a finished 2-round x_su' federation of three sites and a plaintext run beside it."""

    folder: Path
    surrogate: str

    def summary(self) -> dict:
        return json.loads((self.folder / self.surrogate / "summary.json").read_text())


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_plaintext_run(template: dict) -> None:
    """A finished plaintext run, written as the federation writes one (through RunFolder)."""
    run = RunFolder(PLAIN_RUN)
    run.set_info(
        config={**template["config"], "mode": "plaintext"},
        classes=template["classes"],
        input=template["input"],
        rounds=1,
        started="2026-01-01T00:00:00+00:00",
        status="finished",
    )
    run.record(1, "evaluate", "global", {"accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9, "loss": 0.3})
    model = build_model("smallcnn", len(template["classes"]), template["input"]["channels"])
    run.save_checkpoint(1, {"arrays": model.state_dict(), "strategy": {}}, keep=1)
    run.close()


@pytest.fixture(scope="module")
def runs(finished_run: FinishedRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FESF_HOME", str(tmp_path_factory.mktemp("fesf-home")))
        surrogate = finished_run.folder.name
        shutil.copytree(finished_run.folder, runs_folder() / surrogate)
        _write_plaintext_run(json.loads((runs_folder() / surrogate / "summary.json").read_text()))
        yield Runs(runs_folder(), surrogate)


@pytest.fixture
def client(runs: Runs):
    return create_app(runs.folder).server.test_client()


def _surrogate_png(runs: Runs) -> bytes:
    size = runs.summary()["input"]["image-size"]
    return _png(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8))


# --- the API -------------------------------------------------------------------------------


def test_the_runs_list_gives_each_runs_status_settings_and_its_models_round(client, runs):
    listed = {run["name"]: run for run in client.get("/api/runs").get_json()}
    assert set(listed) == {runs.surrogate, PLAIN_RUN}
    run = listed[runs.surrogate]
    final = runs.summary()["final"]
    assert (run["status"], run["mode"], run["model"], run["strategy"]) == (
        "finished",
        "x_su_prime",
        "smallcnn",
        "fedavg",
    )
    assert run["sites"] == ["site-1", "site-2", "site-3"]
    assert (run["rounds_done"], run["rounds_total"]) == (2, 2)
    # The run's model is the one the federation chose (best validation macro-F1), as its summary says.
    assert (run["model_round"], run["f1"]) == (final["round"], final["f1"])
    assert "best_f1" not in run


def _stored_details(name: str) -> RunDetails:
    """What the run page reads of run ``name``, through the dashboard's read-only view of its store."""
    stored = StoredRun(runs_folder() / name)
    try:
        return run_details(stored)
    finally:
        stored.close()


def _validated_run(name: str) -> RunDetails:
    """A finished 4-round run whose best validation round (3) is neither its last nor its best test round (2)."""
    run = RunFolder(name)
    run.set_info(
        config={"mode": "x_su_prime", "model": "smallcnn", "strategy": "fedavg"},
        classes=["no-tumour", "tumour"],
        status="finished",
        rounds=4,
    )
    run.set_site("site-1", {protocol.TRAIN_EXAMPLES: 20, protocol.VAL_EXAMPLES: 5, protocol.TEST_EXAMPLES: 8})
    test_f1s, val_f1s = [0.4, 0.9, 0.5, 0.6], [0.3, 0.5, 0.8, 0.7]
    pooled = [[[2, 2], [2, 2]], [[4, 0], [0, 4]], [[3, 1], [0, 4]], [[4, 0], [4, 0]]]
    for server_round, (test_f1, val_f1, counts) in enumerate(zip(test_f1s, val_f1s, pooled), start=1):
        figures = {"accuracy": test_f1, "f1": test_f1, "auroc": test_f1 + 0.05}
        run.record(server_round, "evaluate", "global", figures)
        run.record(server_round, "evaluate", "site-1", figures)
        run.record(server_round, "validation", "global", {"f1": val_f1, "examples": 5})
        run.record_confusion(server_round, "evaluate", "global", counts)
    run.record_confusion(4, "central", "global", [[1, 0], [0, 1]])  # the last round's, not the model's
    run.close()
    return _stored_details(name)


def test_every_page_shows_the_best_validation_rounds_model_not_the_last_or_best_test_round():
    details = _validated_run("validated")
    (row,) = list_runs(runs_folder())
    assert row == details.summary
    assert (row.model_round, row.validation_f1, row.f1) == (3, 0.8, 0.5)
    assert row.auroc == pytest.approx(0.55)
    assert (row.balanced_accuracy, row.one_class) == ((3 / 4 + 1) / 2, False)
    assert final_metrics(details) == {
        "accuracy": 0.5,
        "f1": 0.5,
        "auroc": pytest.approx(0.55),
        "balanced-accuracy": 0.875,
    }
    assert details.confusion is not None and details.confusion["round"] == 3  # not round 4's central matrix
    assert (details.confusion["source"], details.confusion["counts"]) == (
        "federated evaluation, summed over sites",
        [[3, 1], [0, 4]],
    )
    (listed,) = create_app(runs_folder()).server.test_client().get("/api/runs").get_json()
    assert (listed["model_round"], listed["f1"]) == (3, 0.5) and "best_f1" not in listed

    page = run_page(details)
    headline = next(c for c in _components(page) if getattr(c, "id", None) == "run-headline")
    assert "macro-F1 0.500, AUROC 0.550 of round 3's model (best validation macro-F1 0.800)" in headline.children
    (sites,) = [c for c in _components(page) if getattr(c, "id", None) == "sites-table"]
    cells = [cell.children for cell in _components(sites) if type(cell).__name__ in ("Th", "Td")]
    assert cells[cells.index("site-1") + 1] == "0.500"  # round 3's accuracy
    assert cells[-3:] == ["20", "5", "8"] and "validation images" in cells
    (validation,) = [trace for trace in global_figure(details).data if trace.name == "validation macro-F1"]
    assert (list(validation.x), list(validation.y)) == ([1, 2, 3, 4], [0.3, 0.5, 0.8, 0.7])
    (runs_table,) = [c for c in _components(runs_page([row], "runs")) if getattr(c, "id", None) == "runs-table"]
    cells = [cell.children for cell in _components(runs_table) if type(cell).__name__ in ("Th", "Td")]
    assert cells[cells.index("model round") + 12] == "3" and cells[cells.index("macro-F1") + 12] == "0.500"
    (compare,) = [c for c in _components(compare_page([details, details])) if getattr(c, "id", None) == "compare-table"]
    cells = [cell.children for cell in _components(compare) if type(cell).__name__ == "Td"]
    assert cells[cells.index("model round") + 1 :][:2] == ["3", "3"] and "best macro-F1" not in cells


def test_a_runs_details_hold_every_round_each_sites_figures_and_the_confusion_matrix(client, runs):
    details = client.get(f"/api/runs/{runs.surrogate}").get_json()
    assert [entry["round"] for entry in details["history"]] == [1, 2]
    for entry in details["history"]:
        assert set(entry["evaluate"]) == {"global", "site-1", "site-2", "site-3"}
        assert set(entry["train"]) == {"global", "site-1", "site-2", "site-3"}
    quality = details["sites"]["site-1"]
    assert 0 <= quality["ssim-x_pl-x_su_prime"] <= 1 and quality["psnr-host-x_su_prime"] > 0
    confusion = details["confusion"]
    chosen = runs.summary()["final"]["round"]  # the run's model: its best validation round
    assert (confusion["round"], confusion["source"]) == (chosen, "federated evaluation, summed over sites")
    tested = sum(site["test-examples"] for site in details["sites"].values())
    assert np.asarray(confusion["counts"]).sum() == tested  # every site's test image, once
    final = details["history"][chosen - 1]["evaluate"]["global"]
    assert np.trace(confusion["counts"]) / tested == pytest.approx(final["accuracy"])


def test_metrics_export_as_csv_and_json_with_every_stored_value(client, runs):
    response = client.get(f"/api/runs/{runs.surrogate}/metrics.csv")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    as_json = client.get(f"/api/runs/{runs.surrogate}/metrics.json").get_json()
    assert len(rows) == len(as_json) > 0
    history = runs.summary()["history"]
    expected = {
        (entry["round"], phase, scope, name): value
        for entry in history
        for phase, scopes in entry.items()
        if phase != "round"
        for scope, metrics in scopes.items()
        for name, value in metrics.items()
    }
    assert {(int(r["round"]), r["phase"], r["scope"], r["metric"]): float(r["value"]) for r in rows} == expected
    assert {(r["round"], r["phase"], r["scope"], r["metric"]): r["value"] for r in as_json} == expected


def test_the_runs_list_gives_the_pooled_balanced_accuracy_and_whether_the_model_answers_one_class(client, runs):
    listed = {run["name"]: run for run in client.get("/api/runs").get_json()}
    pooled = runs.summary()["final"]["confusion"]["evaluate"]
    surrogate = listed[runs.surrogate]
    expected = classification_figures(np.asarray(pooled))["balanced_accuracy"]
    assert surrogate["balanced_accuracy"] == pytest.approx(expected)
    assert surrogate["one_class"] is (one_class_answer(pooled) is not None)
    assert surrogate["auroc"] == runs.summary()["final"]["auroc"]  # the sites' AUROCs averaged by their images
    # A run without a confusion matrix or AUROC (as stored before these were recorded) has none of the figures.
    plain = listed[PLAIN_RUN]
    assert (plain["balanced_accuracy"], plain["auroc"], plain["one_class"]) == (None, None, False)
    exported = client.get(f"/api/runs/{runs.surrogate}/metrics.csv").get_data(as_text=True)
    assert ",evaluate,global,balanced-accuracy," in exported and ",evaluate,global,auroc," in exported


def _components(component) -> Iterator:
    """``component`` and every Dash component under it."""
    if isinstance(component, (list, tuple)):
        for child in component:
            yield from _components(child)
    elif hasattr(component, "to_plotly_json"):
        yield component
        yield from _components(getattr(component, "children", None))


def _badges(page) -> list:
    return [component for component in _components(page) if getattr(component, "className", None) == "one-class"]


def _old_run(name: str, pooled: list[list[int]]) -> RunDetails:
    """A run as stored before balanced accuracy was recorded: figures and the pooled confusion matrix only."""
    run = RunFolder(name)
    run.set_info(config={"mode": "x_su_prime"}, classes=["no-tumour", "tumour"], status="finished", rounds=1)
    run.record(1, "evaluate", "global", {"accuracy": 0.8, "precision": 0.4, "recall": 0.5, "f1": 0.44, "loss": 0.6})
    run.record_confusion(1, "evaluate", "global", pooled)
    run.close()
    return _stored_details(name)


def test_a_run_whose_model_answers_one_class_is_badged_on_every_page_and_old_runs_still_show():
    one_class, learned = _old_run("one-class", [[8, 0], [2, 0]]), _old_run("learned", [[7, 1], [1, 1]])
    assert {s.name: (s.balanced_accuracy, s.one_class) for s in list_runs(runs_folder())} == {
        "one-class": (0.5, True),
        "learned": (pytest.approx((7 / 8 + 1 / 2) / 2), False),
    }
    for page in (runs_page([one_class.summary], "runs"), run_page(one_class), compare_page([learned, one_class])):
        (badge,) = _badges(page)
        assert badge.children == "one class" and "has not learned" in badge.title
    assert _badges([runs_page([learned.summary], "runs"), run_page(learned), compare_page([learned, learned])]) == []
    headline = next(c for c in _components(run_page(one_class)) if getattr(c, "id", None) == "run-headline")
    assert "accuracy 0.800, balanced accuracy 0.500" in headline.children
    assert "of round 1's model (last round; no site validates)" in headline.children


def test_a_round_missing_a_site_is_marked_and_a_run_whose_server_died_says_so_with_its_resume_command():
    degraded = RunFolder("degraded")
    degraded.set_info(config={"mode": "x_su_prime"}, classes=["a", "b"], status="degraded", rounds=2)
    for site in ("A", "B"):
        degraded.set_site(site, {"classes": ["a", "b"], "channels": 1, "image-size": 16, "train-examples": 8})
    for server_round in (1, 2):
        for site in ("A", "B") if server_round == 1 else ("B",):
            degraded.record(server_round, "train", site, {"train-loss": 0.5})
    degraded.record_absences(2, "train", {"A": "the SuperNode is offline"})
    degraded.close()
    details = _stored_details("degraded")
    (cell,) = [c for c in _components(run_page(details)) if getattr(c, "className", None) == "missing"]
    assert cell.title == "train: the SuperNode is offline"
    (note,) = [c for c in _components(run_page(details)) if getattr(c, "id", None) == "run-note"]
    assert note.children == "finished without every site: site A missing from round 2 (the SuperNode is offline)"

    # A live run whose heartbeat stopped: killed outright, it could not say so itself.
    dead = RunFolder("dead")
    dead.set_info(config={"mode": "x_su_prime"}, status="running", rounds=30)
    dead.record(4, "train", "global", {"train-loss": 0.5})
    dead.close()
    beat = runs_folder() / "dead" / HEARTBEAT_FILE
    beat.touch()
    (listed,) = [row for row in list_runs(runs_folder()) if row.name == "dead"]
    assert listed.status == "running"  # beating: alive
    os.utime(beat, (time.time() - STALE_SECONDS - 1,) * 2)
    (listed,) = [row for row in list_runs(runs_folder()) if row.name == "dead"]
    assert listed.status == "stopped unexpectedly"
    assert listed.note is not None and listed.note.startswith("its server stopped unexpectedly after round 4 of 30")
    assert listed.note.endswith("resume it with --run-config \"resume='dead'\" (flwr run . or fesf-server run)")
    client = create_app(runs_folder()).server.test_client()
    assert client.get("/api/runs/dead").get_json()["note"] == listed.note


def test_a_preparing_run_shows_its_settings_and_each_sites_stage():
    run = RunFolder("preparing")
    run.set_info(config={"mode": "x_su", "model": "smallcnn", "strategy": "fedprox"}, status="preparing", rounds=3)
    iqem = SiteProgress("site-2", Stage.IQEM, since=1.0e9, updated=1.0e9 + 13, done=40, total=100, rate=3.1, eta=19.4)
    run.set_preparation([iqem, SiteProgress.at("site-1", Stage.WAITING)])
    run.close()
    client = create_app(runs_folder()).server.test_client()
    (listed,) = client.get("/api/runs").get_json()
    shown = (listed["status"], listed["mode"], listed["model"], listed["strategy"])
    assert shown == ("preparing", "x_su", "smallcnn", "fedprox")
    details = client.get("/api/runs/preparing").get_json()
    assert [SiteProgress.from_json(record).site for record in details["preparation"]] == ["site-1", "site-2"]

    stored = StoredRun(runs_folder() / "preparing")
    page = run_page(run_details(stored))
    (table_,) = [c for c in _components(page) if getattr(c, "id", None) == "preparation-table"]
    cells = [cell.children for cell in _components(table_) if type(cell).__name__ == "Td"]
    assert cells[:2] == ["site-1", "waiting"] and cells[4:6] == ["site-2", "IQEM step 40/100 (3.1 step/s, ETA 19 s)"]
    # Once the rounds begin, the page has no preparation to show.
    running = RunFolder("preparing")
    running.set_info(status="running")
    running.close()
    assert not [c for c in _components(run_page(run_details(stored))) if getattr(c, "id", None) == "preparation"]
    stored.close()


def test_a_run_refused_for_a_bad_setting_is_listed_failed_with_its_one_line_error():
    from flwr.app import Context, RecordDict

    import server.app
    from fesf_fed.errors import ConfigError

    context = Context(run_id=77, node_id=0, node_config={}, state=RecordDict(), run_config=run_config(mode="nonsense"))
    with pytest.raises(ConfigError):
        server.app.main(None, context)  # type: ignore[arg-type]  # refused before any grid use
    (listed,) = list_runs(runs_folder())
    assert (listed.name, listed.status) == ("77", "failed")
    (error,) = [c for c in _components(run_page(_stored_details("77"))) if getattr(c, "id", None) == "run-note"]
    assert error.children.startswith("run config mode: Input should be") and "(got 'nonsense')" in error.children


@pytest.mark.parametrize("name", ["nope", "..", "%2E%2E%2Fetc", "a b"])
def test_an_unknown_or_malformed_run_is_404(client, name):
    response = client.get(f"/api/runs/{name}")
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_the_diagnosis_service_gives_the_global_models_class_and_probabilities(client, runs):
    png = _surrogate_png(runs)
    response = client.post(f"/api/runs/{runs.surrogate}/diagnose", data=png, content_type="image/png")
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    summary = runs.summary()
    assert list(result["probabilities"]) == summary["classes"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    # The same figures as the run's model (its best validation round's checkpoint) gives when run by hand.
    checkpoint = torch.load(runs.folder / runs.surrogate / "checkpoints" / "best.pt", weights_only=True)
    model = build_model("smallcnn", len(summary["classes"]), 1)
    model.load_state_dict(checkpoint["arrays"])
    pixels = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255)[None, None]
    expected = torch.softmax(model.eval()(pixels), dim=1)[0].tolist()
    assert list(result["probabilities"].values()) == pytest.approx(expected, abs=1e-6)
    assert result["class"] == summary["classes"][int(np.argmax(expected))]
    assert result["round"] == checkpoint["round"] == summary["final"]["round"]


def test_the_diagnosis_service_serves_the_best_validation_rounds_model_not_the_newest():
    size = 16
    run = RunFolder("validated-model")
    run.set_info(
        config={"mode": "x_su_prime", "model": "smallcnn"},
        classes=["no-tumour", "tumour"],
        input={"channels": 1, "image-size": size},
        status="finished",
        rounds=2,
    )
    best, newest = (build_model("smallcnn", 2, 1, image_size=size).state_dict() for _ in range(2))
    run.save_checkpoint(2, {"arrays": newest, "strategy": {}}, keep=2)
    run.save_best(1, best)
    run.close()
    loaded = DiagnosisService(runs_folder(), resize=False, device=torch.device("cpu")).global_model("validated-model")
    served = loaded.model.state_dict()
    assert loaded.round == 1
    assert all(torch.equal(served[key], best[key]) for key in best)
    assert not all(torch.equal(served[key], newest[key]) for key in newest)
    png = _png(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8))
    client = create_app(runs_folder()).server.test_client()
    assert _diagnose(client, "validated-model", png)[1]["round"] == 1


def _diagnose(client, run: str, data: bytes, content_type: str = "image/png"):
    response = client.post(f"/api/runs/{run}/diagnose", data=data, content_type=content_type)
    return response.status_code, response.get_json()["error"] if response.status_code >= 400 else response.get_json()


def test_bad_uploads_get_clear_4xx_errors(client, runs):
    png = _surrogate_png(runs)
    assert _diagnose(client, runs.surrogate, b"GIF89a not a png") == (
        415,
        "the upload is not a PNG image; send a surrogate as PNG",
    )
    status, error = _diagnose(client, runs.surrogate, png, "multipart/form-data; boundary=x")
    assert status == 415 and "Content-Type: image/png" in error
    status, error = _diagnose(client, runs.surrogate, png[:40])
    assert status == 400 and "cannot be decoded" in error
    status, error = _diagnose(client, runs.surrogate, _png(np.zeros((20, 24), dtype=np.uint8)))
    assert status == 422 and "the image is 24x20 px" in error and "--resize" in error
    assert _diagnose(client, runs.surrogate, b"")[0] == 400
    status, error = _diagnose(client, PLAIN_RUN, png)
    assert status == 409 and "trained on plaintext" in error
    assert _diagnose(client, "nope", png)[0] == 404


def test_uploads_over_the_limit_are_413_and_other_sizes_are_resized_when_configured(runs):
    small = create_app(runs.folder, max_upload=1000).server.test_client()
    status, error = _diagnose(
        small, runs.surrogate, _png(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    )
    assert status == 413 and "larger than" in error
    resizing = create_app(runs.folder, resize=True).server.test_client()
    status, result = _diagnose(resizing, runs.surrogate, _png(np.zeros((20, 24, 3), dtype=np.uint8)))
    assert status == 200 and set(result["probabilities"]) == set(runs.summary()["classes"])


def test_the_store_is_read_only_and_uploads_are_never_written(client, runs):
    before = {path: path.stat().st_mtime_ns for path in runs.folder.rglob("*")}
    client.get("/")
    client.get(f"/api/runs/{runs.surrogate}")
    assert _diagnose(client, runs.surrogate, _surrogate_png(runs))[0] == 200
    assert {path: path.stat().st_mtime_ns for path in runs.folder.rglob("*")} == before
    stored = StoredRun(runs.folder / runs.surrogate)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        stored.store.execute("DELETE FROM metrics")
    stored.close()


# --- access ---------------------------------------------------------------------------------


def test_any_address_but_loopback_needs_a_token_of_at_least_128_bits():
    assert check_token("127.0.0.1", None) is None and check_token("::1", None) is None
    assert "FESF_DASHBOARD_TOKEN" in (check_token("0.0.0.0", None) or "")
    assert "at least 22" in (check_token("127.0.0.1", "short") or "")
    assert check_token("0.0.0.0", TOKEN) is None


def test_the_command_refuses_to_listen_beyond_loopback_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("FESF_DASHBOARD_TOKEN", raising=False)
    assert dashboard_main(["--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.startswith("error: --host 0.0.0.0 lets other machines reach the dashboard")


def test_with_a_token_every_request_needs_it(runs):
    client = create_app(runs.folder, token=TOKEN).server.test_client()
    assert client.get("/api/runs").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    opened = client.get(f"/?token={TOKEN}")
    assert opened.status_code == 302 and opened.headers["Location"] == "/"  # the token leaves the address bar
    cookie = client.get_cookie(COOKIE)
    assert cookie.value == TOKEN and cookie.http_only and cookie.same_site == "Strict"
    assert client.get("/api/runs").status_code == 200  # the browser's cookie now opens it


def test_the_audits_page_needs_the_token_like_every_other_page():
    client = create_app(runs_folder(), token=TOKEN).server.test_client()
    assert client.get("/audits").status_code == 401
    assert client.get("/audits", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


# --- a real browser -------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: browser tests need Debian's chromium (make test installs it)")
    with chromium() as opened:
        yield opened
    assert opened.outside == [], f"the page fetched from outside this machine: {opened.outside}"


def test_the_browser_shows_a_finished_runs_curves_sites_quality_and_diagnosis(runs, browser, tmp_path):
    page = browser.page
    with dashboard(runs.folder) as served:
        page.goto(served.url + "/")
        assert "model round" in page.inner_text("#runs-table") and "AUROC" in page.inner_text("#runs-table")
        page.get_by_role("link", name=runs.surrogate).click()
        page.wait_for_selector("#global-figure .scatterlayer .trace")
        assert "x_su_prime · smallcnn · fedavg" in page.inner_text("#run-headline")
        assert "round 2/2" in page.inner_text("#run-headline")
        # Six scores (AUROC among them), the validation macro-F1, the evaluation loss and the training loss:
        # one plotted line each.
        assert page.locator("#global-figure .scatterlayer .trace").count() == 9
        assert page.locator("#sites-figure .scatterlayer .trace").count() == 3 * 8
        assert "AUROC" in page.inner_text("#run-headline") and "AUROC" in page.inner_text("#sites-table thead")
        summary = runs.summary()
        site = summary["sites"]["site-2"]
        quality_row = page.locator("#quality-table tr", has_text="site-2").inner_text()
        assert f"{site['ssim-x_pl-x_su_prime']:.4f}" in quality_row and f"{site['psnr-host-x_sy']:.2f}" in quality_row
        final = summary["history"][summary["final"]["round"] - 1]["evaluate"]  # the run's model's round
        site_row = page.locator("#sites-table tr", has_text="site-3").inner_text()
        assert f"{final['site-3']['accuracy']:.3f}" in site_row and f"{final['site-3']['auroc']:.3f}" in site_row
        assert page.locator("#participation-table tbody tr").count() == 2
        assert page.locator("#participation-table tbody tr").first.inner_text().count("✓") == 3
        counts = np.asarray(summary["final"]["confusion"]["evaluate"])
        assert page.locator("#confusion-figure .heatmaplayer").count() == 1
        # Each cell of the heatmap is labelled with its count, row by row.
        labels = page.locator("#confusion-figure .heatmap-label text").all_text_contents()
        assert [int(label) for label in labels] == counts.ravel().tolist()
        assert "mode" in page.inner_text("#config-table") and "x_su_prime" in page.inner_text("#config-table")
        assert page.get_attribute("#export-csv", "href") == f"/api/runs/{runs.surrogate}/metrics.csv"

        upload = tmp_path / "surrogate.png"
        upload.write_bytes(_surrogate_png(runs))
        page.set_input_files("#diagnose-upload input[type=file]", str(upload))
        assert page.inner_text("#diagnosis-class", timeout=30_000) in summary["classes"]

        page.goto(f"{served.url}/compare?runs={PLAIN_RUN},{runs.surrogate}")
        page.wait_for_selector("#compare-figure .scatterlayer .trace")
        table = page.inner_text("#compare-table")
        ratio = summary["final"]["accuracy"] / 0.9
        assert "plaintext" in table and "x_su_prime" in table and f"{ratio:.3f}" in table and "AUROC" in table


def _headline_round(page) -> int | None:
    text = page.inner_text("#run-headline")
    marker = text.split("round ", 1)[1].split("/", 1)[0] if "round " in text else ""
    return int(marker) if marker.isdigit() else None


def test_a_live_run_appears_and_its_rounds_show_without_a_reload(browser, tmp_path):
    # Rounds go on after a diagnosis: its answer must stay on the page as the page follows them.
    page = browser.page
    home = tmp_path / "live-home"
    rounds = 4
    config = run_config(**{**TINY_RUN, "num-server-rounds": rounds})
    # Rounds of about 3 s (each site's training waits 1.5 s; two SuperNodes serve three sites), so the
    # page, checking every 2 s, sees them one by one.
    script = f"from tests.simulation import Delay, simulate; simulate({config!r}, instrument=Delay(1.5))"
    log = io.StringIO()
    federation = FlowerProcess(
        [sys.executable, "-c", script], env=flower_env(FESF_HOME=str(home), PYTHONPATH=str(REPO)), sink=log
    )
    try:
        with dashboard(home / "runs") as served:
            page.goto(served.url + "/")
            page.evaluate("window.notReloaded = true")
            link = page.locator("#runs-table a").first
            link.wait_for(timeout=120_000)  # the run appears in the open list by itself
            link.click()
            page.wait_for_selector("#run-headline")
            size = TINY_BUILD["data.image_size"]
            assert isinstance(size, int)
            upload = tmp_path / "surrogate.png"
            upload.write_bytes(_png(np.random.default_rng(1).integers(0, 256, (size, size), dtype=np.uint8)))
            seen, diagnosed_at = [], None
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and "finished" not in page.inner_text("h1"):
                seen.append(_headline_round(page))
                if diagnosed_at is None and page.locator("#diagnose-upload").count():
                    page.set_input_files("#diagnose-upload input[type=file]", str(upload))
                    page.wait_for_selector("#diagnosis-class", timeout=30_000)
                    diagnosed_at = _headline_round(page)
                time.sleep(0.5)
            assert "finished" in page.inner_text("h1"), log.getvalue()[-3000:]
            assert _headline_round(page) == rounds
            assert page.evaluate("window.notReloaded") is True
            shown = sorted({value for value in seen if value})
            assert len(shown) >= 3, f"the page showed rounds {shown} while the run went on"
            assert page.locator("#global-figure .scatterlayer .trace").first.locator("path.point").count() == rounds
            assert diagnosed_at is not None and diagnosed_at < rounds, f"diagnosed at round {diagnosed_at}"
            assert page.locator("#diagnosis-class").count() == 1, "a new round cleared the diagnosis"
    finally:
        federation.stop(grace=10)
    shutil.rmtree(home, ignore_errors=True)


def _audit(name: str, created: str) -> AuditReport:
    """An audit as ``fesf audit`` stores it: linkage leaks, the learned inversion (with its curve) holds."""
    linkage = AttackResult(
        attack="linkage",
        figures={"top1": 0.969, "top1_over_chance": 1066.0},
        baselines={"chance_top1": 0.0009},
        leaks=True,
        verdict="top-1 0.969 of 1101 candidates is 1066x chance (above the goal of 5x)",
        seconds=12.0,
    )
    inversion = AttackResult(
        attack="inversion",
        figures={"ssim_x_su_prime": 0.264},
        baselines={"mean_image_ssim": 0.21},
        leaks=False,
        verdict="SSIM 0.264 against 0.210 for the mean image: no better than the nearest public image",
        curve=[CurvePoint(epoch=epoch, ssim=0.2 + 0.01 * epoch) for epoch in range(1, 7)],
        seconds=300.0,
    )
    return AuditReport(
        name=name,
        created=created,
        settings={
            "pipeline": {"alpha": 0.5, "beta": 0.5, "refine_alpha": 0.5, "refine_beta": 0.1, "amplitude_noise": 0.0},
            "data": {"path": None, "source": "br35h", "image_size": 64},
        },
        scenario={
            "victim_images": 440,
            "attacker_images": 1101,
            "attacker_data": "disjoint part of the site's data",
            "host_bank": 16,
            "image_shape": [1, 64, 64],
        },
        attacks=[linkage, inversion],
        seconds=900.0,
    )


def _store_audit(name: str, text: str | None) -> None:
    """Folder ``name`` of the audits, with ``text`` as its privacy.json (none when None, as while an audit runs)."""
    folder = audits_folder() / name
    folder.mkdir(parents=True)
    if text is not None:
        (folder / "privacy.json").write_text(text)


def test_the_audits_page_shows_each_attacks_verdict_flags_leaks_and_names_unreadable_audits(browser):
    _store_audit("br35h-paper", _audit("br35h-paper", "2026-03-01T10:00:00+00:00").model_dump_json())
    _store_audit("half-written", '{"name": "half-written", "attacks": []}')
    _store_audit("running", None)
    alien = _audit("alien", "2026-03-03T10:00:00+00:00").model_copy(update={"settings": {"data": {}}})
    _store_audit("alien", alien.model_dump_json())  # validates, but its settings are no site config's
    page = browser.page
    with dashboard(runs_folder()) as served:
        page.goto(served.url + "/")
        page.get_by_role("link", name="Audits").click()
        audit = page.locator("section.audit", has_text="br35h-paper")
        settings = "alpha 0.5 · beta 0.5 · alpha' 0.5 · beta' 0.1 · noise 0.0 · 16 hosts"
        assert settings in audit.locator(".note").inner_text()
        leaking = audit.locator("tr", has_text=ATTACKS["linkage"])
        holding = audit.locator("tr", has_text=ATTACKS["inversion"])
        assert "1066x chance (above the goal of 5x)" in leaking.inner_text()
        assert "top-1 0.969; top-1 / chance 1.07e+03" in leaking.inner_text()  # report.figure_cells' labels
        assert "no better than the nearest public image" in holding.inner_text()
        # Counted, not waited for: the page is drawn at once, so a missing badge fails here and now.
        assert leaking.locator(".leaks").all_inner_texts() == ["leaks"] and holding.locator(".leaks").count() == 0
        # Styled as the one-class badge: the same red.
        background = leaking.locator(".leaks").evaluate("badge => getComputedStyle(badge).backgroundColor")
        assert background == "rgb(254, 226, 226)"
        holding.locator(".scatterlayer .trace").wait_for()  # plotly draws the curve after the page
        assert holding.locator(".scatterlayer .trace path.point").count() == 6  # an epoch a point
        assert leaking.locator(".js-plotly-plot").count() == 0
        lines = {line.split(" — ")[0]: line for line in page.locator("p.audit").all_inner_texts()}
        assert lines.keys() == {"half-written", "running", "alien"}
        assert "unreadable: privacy.json does not hold a site config's surrogate settings" in lines["alien"]
        assert "unreadable: privacy.json is not an audit report (created: Field required" in lines["half-written"]
        assert "unreadable: no privacy.json" in lines["running"]
        # An audit that finishes while the page is open appears without a reload.
        page.evaluate("window.notReloaded = true")
        (audits_folder() / "running" / "privacy.json").write_text(
            _audit("running", "2026-03-02T10:00:00+00:00").model_dump_json()
        )
        page.locator("section.audit", has_text="running").wait_for(timeout=10_000)
        assert page.evaluate("window.notReloaded") is True
        assert page.locator("section.audit h2").all_inner_texts() == ["running", "br35h-paper"]  # newest first
