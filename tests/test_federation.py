"""The federation end to end: Flower simulations of phantom sites, checkpoints, resume, `flwr run`."""

import json
import logging
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fesf_fed.deployment.processes import flower_env
from fesf_fed.errors import ConfigError, FesfError
from fesf_fed.federation.run_summary import RunSummary, selected_round
from fesf_fed.federation.settings import parse_run_settings
from fesf_fed.progress import SiteProgress, Stage
from fesf_fed.task import classification_figures, one_class_answer
from server import federation
from server.federation import _final_metrics, _warn_if_one_class, run_federation
from server.local_superlink import stop_local_superlink
from server.run_store import GLOBAL, RunFolder, StoredRun, runs_folder
from tests.simulation import REPO, TINY_RUN, Delay, ValidationScores, run_config, simulate

#: Small but learnable: 32 px phantoms, 80 per class shared by three sites. With 40 per class
#: the final accuracy swung between 0.59 and 0.9 from one initial model to the next.
LEARNABLE = {
    **TINY_RUN,
    "site.data.image_size": 32,
    "site.data.phantom_per_class": 80,
    "num-server-rounds": 4,
    "local-epochs": 4,
    "partition": "iid",
}


def _only_run() -> Path:
    (run,) = runs_folder().iterdir()
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_simulated_sites_learn_and_the_run_folder_has_everything():
    outcome = simulate(run_config(**LEARNABLE, mode="plaintext", **{"run-name": "plaintext-1"}))
    run = _only_run()
    assert run.name == outcome.run_id == "plaintext-1"  # run-name names the folder, not Flower's run id
    summary = _summary(run)
    assert outcome.summary == RunSummary.read(run / "summary.json")
    assert outcome.summary.to_json() == summary
    assert summary["status"] == "finished"
    assert [entry["round"] for entry in summary["history"]] == [1, 2, 3, 4]
    final = summary["final"]
    # Two balanced classes: chance is 0.5. Seeds 0-2 reached 0.94-0.95.
    assert final["accuracy"] >= 0.8, final
    assert set(final["sites"]) == {"site-1", "site-2", "site-3"}
    for metrics in final["sites"].values():
        figures = {"accuracy", "balanced-accuracy", "precision", "recall", "f1", "auroc", "loss", "num-examples"}
        assert figures <= set(metrics)  # each site's evaluate reply carried them, AUROC included
    assert final["auroc"] >= 0.8, final
    assert summary["config"]["mode"] == "plaintext"
    assert set(summary["sites"]) == {"site-1", "site-2", "site-3"}
    # The last keep-checkpoints (2) rounds' checkpoints, and the best validation round's model.
    checkpoints = ["best.pt", "round-0003.pt", "round-0004.pt"]
    assert [path.name for path in sorted((run / "checkpoints").iterdir())] == checkpoints
    with sqlite3.connect(run / "store.sqlite") as store:
        rows = store.execute("SELECT COUNT(*) FROM metrics WHERE phase = 'evaluate' AND scope = 'site-2'").fetchone()
    assert rows[0] > 0


def test_a_run_repeated_with_the_same_seed_gives_the_same_figures(finished_run, fesf_home):
    # The session's run had the same config. With the same site keys (they pick each image's
    # host), the surrogates rebuilt in this FESF_HOME and every figure must be the same.
    shutil.copytree(finished_run.home / "secrets", fesf_home / "secrets")
    simulate(run_config(**TINY_RUN))
    first, second = _summary(finished_run.folder)["history"], _summary(_only_run())["history"]
    assert [(entry["train"], entry["evaluate"]) for entry in first] == [
        (entry["train"], entry["evaluate"]) for entry in second
    ]


def test_the_global_balanced_accuracy_is_the_pooled_one_and_the_summary_says_if_the_model_is_one_class(finished_run):
    stored = StoredRun(finished_run.folder)
    query = "SELECT round, counts FROM confusion WHERE phase = 'evaluate' AND scope = ?"
    pooled = dict(stored.store.execute(query, (GLOBAL,)))
    stored.close()
    summary = _summary(finished_run.folder)
    assert sorted(pooled) == [entry["round"] for entry in summary["history"]] == [1, 2]
    for entry in summary["history"]:
        # From the sites' summed confusion matrix, not their balanced accuracies averaged by Flower.
        figures = classification_figures(np.asarray(json.loads(pooled[entry["round"]])))
        assert entry["evaluate"][GLOBAL]["balanced-accuracy"] == pytest.approx(figures["balanced_accuracy"])
        assert all("balanced-accuracy" in entry["evaluate"][site] for site in ("site-1", "site-2", "site-3"))
    final = summary["final"]
    # Of the run's model: the round with the best validation macro-F1, not necessarily the last.
    (chosen,) = [entry for entry in summary["history"] if entry["round"] == final["round"]]
    assert final["balanced-accuracy"] == chosen["evaluate"][GLOBAL]["balanced-accuracy"]
    assert final["one_class"] is (one_class_answer(final["confusion"]["evaluate"]) is not None)
    # The global AUROC: the sites' averaged by their test images, over the sites that have one.
    weighted = [(site["num-examples"], site["auroc"]) for site in final["sites"].values() if "auroc" in site]
    expected = sum(n * auroc for n, auroc in weighted) / sum(n for n, _ in weighted)
    assert final["auroc"] == chosen["evaluate"][GLOBAL]["auroc"] == pytest.approx(expected)


def test_a_site_without_an_auroc_is_left_out_of_the_federations_instead_of_failing_the_round(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)  # Flower's messages need a run, as inside Flower

    def reply(examples: int, **auroc: float) -> Message:
        metrics = MetricRecord({"num-examples": examples, "accuracy": 0.5, **auroc})
        return Message(RecordDict({"metrics": metrics, "site": ConfigRecord({"name": f"s{examples}"})}), 0, "evaluate")

    replies = [reply(10, auroc=0.9), reply(30, auroc=0.5), reply(20)]  # s20's test split held one class
    with pytest.raises(InconsistentMessageReplies):
        FedAvg().aggregate_evaluate(1, replies)  # Flower alone refuses keys that differ
    aggregated = FedAvg().aggregate_evaluate(1, federation._aggregable(replies))
    assert aggregated is not None and set(aggregated) == {"accuracy"}
    run = RunFolder("auroc")
    assert federation._record_auroc(run, 1, replies) == pytest.approx((10 * 0.9 + 30 * 0.5) / 40)
    assert run.rounds()[0].figures("evaluate")["auroc"] == pytest.approx(0.6)
    assert federation._record_auroc(run, 2, [reply(20)]) is None and len(run.rounds()) == 1
    run.close()
    assert replies[0].content["metrics"]["auroc"] == 0.9  # the sites' own records keep theirs


def test_a_summary_reads_back_as_written_and_a_malformed_one_is_refused_in_one_line(finished_run, tmp_path):
    path = finished_run.folder / "summary.json"
    written = _summary(finished_run.folder)
    summary = RunSummary.read(path)
    # The typed summary writes the file's JSON again, key for key.
    assert summary.to_json() == written
    assert summary.name == finished_run.folder.name and summary.status == "finished"
    assert (
        summary.final is not None and summary.final.figure("balanced-accuracy") == written["final"]["balanced-accuracy"]
    )
    assert summary.final.figure("auroc") == written["final"]["auroc"]
    # A summary written before AUROC was reported reads, without one, and writes back as it was.
    old = json.loads(json.dumps(written))
    del old["final"]["auroc"]
    reread = RunSummary.from_json(old)
    assert reread.final is not None and reread.final.figure("auroc") is None and reread.to_json() == old
    # So does one from before balanced accuracy and the one-class flag; and any JSON value in the config.
    for key in ("balanced-accuracy", "one_class"):
        del old["final"][key]
    old["config"] |= {"site.pipeline.outputs": ["x_su_prime"], "site.data.max_per_class": None}
    reread = RunSummary.from_json(old)
    assert reread.final is not None and reread.final.one_class is None and reread.final.balanced_accuracy is None
    assert reread.config["site.pipeline.outputs"] == ["x_su_prime"]
    assert [entry.round for entry in summary.history] == [1, 2]
    assert set(summary.sites) == {"site-1", "site-2", "site-3"}
    broken = tmp_path / "summary.json"
    with pytest.raises(FesfError, match=f"^{re.escape(str(broken))}: not found"):
        RunSummary.read(broken)
    for damage, message in [
        (
            lambda data: data["history"][1]["evaluate"]["site-2"].update(f1="high"),
            "history.1.evaluate.site-2.f1: Input should be a valid number",
        ),
        (
            lambda data: data.update(status="paused"),
            "status: Input should be 'preparing', 'running', 'finished', 'degraded', 'stopped' or 'failed'",
        ),
        (lambda data: data["final"].update(one_class="no"), "final.one_class: Input should be a valid boolean"),
        (lambda data: data.update(extra=1), "extra: Extra inputs are not permitted"),
    ]:
        data = json.loads(json.dumps(written))
        damage(data)
        broken.write_text(json.dumps(data))
        with pytest.raises(
            FesfError, match=f"^{re.escape(str(broken))}: not a run summary: {re.escape(message)}"
        ) as caught:
            RunSummary.read(broken)
        assert "\n" not in str(caught.value)
    broken.write_text("{")
    with pytest.raises(FesfError, match="not JSON"):
        RunSummary.read(broken)


def test_the_run_keeps_the_model_of_its_best_validation_round(finished_run):
    summary = _summary(finished_run.folder)
    pooled = {entry["round"]: entry["validation"][GLOBAL] for entry in summary["history"]}
    # Every site that holds validation images (a tiny site may hold none) validated every round,
    # and the global figures are those of their matrices summed.
    validating = {site for site, details in summary["sites"].items() if details["val-examples"] > 0}
    assert validating and all(set(entry["validation"]) == {GLOBAL, *validating} for entry in summary["history"])
    for entry in summary["history"]:
        sites = sum(entry["validation"][site]["examples"] for site in validating)
        assert (
            entry["validation"][GLOBAL]["examples"]
            == sites
            == sum(summary["sites"][site]["val-examples"] for site in validating)
        )
    best = max(pooled, key=lambda r: (pooled[r]["f1"], -r))
    final = summary["final"]
    assert final["round"] == best and final["validation-f1"] == pooled[best]["f1"]
    chosen = next(entry for entry in summary["history"] if entry["round"] == best)
    assert final["accuracy"] == chosen["evaluate"][GLOBAL]["accuracy"]
    # best.pt holds that round's global model: the one its round checkpoint saved.
    stored = torch.load(finished_run.folder / "checkpoints" / "best.pt", weights_only=True)
    checkpoint = torch.load(finished_run.folder / "checkpoints" / f"round-{best:04d}.pt", weights_only=True)
    assert stored["round"] == best
    assert all(torch.equal(stored["arrays"][name], checkpoint["arrays"][name]) for name in checkpoint["arrays"])


def test_the_federation_keeps_an_earlier_round_that_validated_best_and_its_model():
    # The sites' validation counts are rewritten: round 1 perfect, rounds 2 and 3 one-class.
    config = run_config(**{**TINY_RUN, "num-server-rounds": 3, "keep-checkpoints": 3})
    simulate(config, instrument=ValidationScores(best_round=1))
    run = _only_run()
    summary = _summary(run)
    scores = [entry["validation"][GLOBAL]["f1"] for entry in summary["history"]]
    assert scores[0] == 1.0 and max(scores[1:]) < 1.0
    assert summary["final"]["round"] == 1 and summary["final"]["validation-f1"] == 1.0
    # Round 1's test figures, not the last round's, and round 1's model in best.pt.
    assert summary["final"]["accuracy"] == summary["history"][0]["evaluate"][GLOBAL]["accuracy"]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    first = torch.load(run / "checkpoints" / "round-0001.pt", weights_only=True)
    last = torch.load(run / "checkpoints" / "round-0003.pt", weights_only=True)
    assert best["round"] == 1
    assert all(torch.equal(best["arrays"][name], first["arrays"][name]) for name in first["arrays"])
    assert not all(torch.equal(best["arrays"][name], last["arrays"][name]) for name in last["arrays"])


def test_a_round_missing_a_validating_sites_counts_cannot_be_chosen():
    run = RunFolder("partial")
    matrix = np.array([[3, 1], [0, 4]])
    # Round 1: both validating sites answered; round 2: site-b's reply is missing.
    assert federation._record_validation(run, 1, {"site-a": matrix, "site-b": matrix}, {"site-a", "site-b"}) is not None
    assert federation._record_validation(run, 2, {"site-a": np.eye(2, dtype=int) * 5}, {"site-a", "site-b"}) is None
    rounds = run.rounds()
    run.close()
    assert rounds[1].figures("validation", "site-a")["f1"] == 1.0  # the site's own figures are kept
    assert rounds[1].figures("validation") == {}  # but no pooled figure: round 2 is not comparable
    assert selected_round(rounds) == 1


def test_the_final_figures_are_the_best_validation_rounds_not_the_last_or_the_best_tested():
    run = RunFolder("selection")
    # Round 2 validates best; round 3 tests best and is the last: neither may be picked for its test figures.
    for server_round, validation_f1, test_f1 in ((1, 0.5, 0.5), (2, 0.8, 0.6), (3, 0.8, 0.9)):
        run.record(server_round, "evaluate", GLOBAL, {"accuracy": test_f1, "f1": test_f1})
        run.record_confusion(server_round, "evaluate", GLOBAL, [[server_round, 1], [1, 2]])
        run.record(server_round, "validation", GLOBAL, {"f1": validation_f1, "examples": 4})
    final = _final_metrics(run)
    run.close()
    assert (final.round, final.validation_f1, final.f1) == (2, 0.8, 0.6)  # the earliest of the tied best
    assert final.confusion["evaluate"] == ((2, 1), (1, 2))
    # Without validation figures the last round's model is the result.
    plain = RunFolder("no-validation")
    for server_round in (1, 2):
        plain.record(server_round, "evaluate", GLOBAL, {"accuracy": 0.1 * server_round})
    final = _final_metrics(plain)
    plain.close()
    assert (final.round, final.validation_f1, final.accuracy) == (2, None, 0.2)


def test_a_resumed_run_mends_a_best_model_that_an_interruption_left_unwritten():
    from server.strategies import build_strategy, strategy_state

    settings, _ = parse_run_settings(run_config(resume="interrupted"))
    strategy = build_strategy(settings, settings.num_sites)
    run = RunFolder("interrupted")
    arrays = {str(r): {"weight": torch.full((2,), float(r))} for r in (1, 2)}
    for server_round, validation_f1 in ((1, 0.4), (2, 0.7)):
        run.save_checkpoint(
            server_round, {"arrays": arrays[str(server_round)], "strategy": strategy_state(strategy)}, 2
        )
        run.record(server_round, "validation", GLOBAL, {"f1": validation_f1})
        if server_round == 1:
            run.save_best(1, arrays["1"])
    # Stopped after round 2's metrics, before its best.pt: round 2 is the best, best.pt still holds round 1.
    start, _ = federation._start(run, settings, strategy, ArrayRecord())
    best = run.best_checkpoint()
    assert start == 3 and best is not None and best["round"] == 2
    assert torch.equal(best["arrays"]["weight"], arrays["2"]["weight"])
    # An earlier best round's best.pt is left as it is.
    run.record(2, "validation", GLOBAL, {"f1": 0.1})
    run.save_best(1, arrays["1"])
    federation._start(run, settings, strategy, ArrayRecord())
    best = run.best_checkpoint()
    run.close()
    assert best is not None and best["round"] == 1 and torch.equal(best["arrays"]["weight"], arrays["1"]["weight"])


def test_the_runs_model_file_holds_the_selected_round_even_when_best_pt_was_left_behind():
    run = RunFolder("left-behind")
    arrays = {r: {"weight": torch.full((2,), float(r))} for r in (1, 2, 3)}
    for server_round, validation_f1 in ((1, 0.4), (2, 0.7)):
        run.save_checkpoint(server_round, {"arrays": arrays[server_round]}, 2)
        run.record(server_round, "validation", GLOBAL, {"f1": validation_f1})
    run.save_best(1, arrays[1])
    # Stopped after round 2's metrics, before its best.pt, and never resumed: round 2's checkpoint is the model.
    assert run.model_checkpoint_path() == run.directory / "checkpoints" / "round-0002.pt"
    # A later, worse round: the best round's checkpoint is pruned, best.pt holds it.
    run.save_best(2, arrays[2])
    run.save_checkpoint(3, {"arrays": arrays[3]}, 1)
    run.record(3, "validation", GLOBAL, {"f1": 0.5})
    model, path = run.model_checkpoint(), run.model_checkpoint_path()
    run.close()
    assert path == run.best_checkpoint_path
    assert model is not None and model["round"] == 2 and torch.equal(model["arrays"]["weight"], arrays[2]["weight"])


def test_a_final_model_that_answers_one_class_is_flagged_and_warned_about(caplog):
    run = RunFolder("one-class")
    run.record(1, "evaluate", GLOBAL, {"accuracy": 0.5, "balanced-accuracy": 0.5})
    run.record_confusion(1, "evaluate", GLOBAL, [[5, 0], [5, 0]])
    run.record(1, "central", GLOBAL, {"accuracy": 0.7, "balanced-accuracy": 0.7})
    run.record_confusion(1, "central", GLOBAL, [[4, 1], [2, 3]])
    final = _final_metrics(run)
    run.close()
    assert final.one_class is True and final.central is not None and final.central.one_class is False
    # summary.json's keys, as the dashboard and scripts read them.
    assert final.to_json()["one_class"] is True and final.to_json()["central"]["one_class"] is False
    assert final.to_json()["confusion"] == {"evaluate": [[5, 0], [5, 0]], "central": [[4, 1], [2, 3]]}
    flower = logging.getLogger("flwr")  # Flower's simulation may stop it propagating to caplog's root handler
    flower.addHandler(caplog.handler)
    try:
        _warn_if_one_class(final, ["no-tumour", "tumour"])
    finally:
        flower.removeHandler(caplog.handler)
    # One warning, for the sites' test images (a propagating logger may hand it to caplog twice).
    (message,) = {(record.levelno, record.getMessage()) for record in caplog.records}
    assert message[0] == logging.WARNING and "answers one class (no-tumour) for every site test image" in message[1]


def test_surrogate_sites_report_quality_and_a_stopped_run_resumes_from_its_checkpoint(monkeypatch, caplog, fesf_home):
    # What the store holds each time the sites' progress changes (the ServerApp runs in this process).
    prepared: list[tuple[dict, list[SiteProgress]]] = []
    set_preparation = RunFolder.set_preparation

    def spy(run: RunFolder, records: list[SiteProgress]) -> None:
        prepared.append((run.info(), records))
        set_preparation(run, records)

    monkeypatch.setattr(RunFolder, "set_preparation", spy)
    monkeypatch.setattr(federation, "_LOG_SECONDS", 0.0)  # a progress line at every pull, not every 10 s
    caplog.set_level(logging.INFO, logger="flwr")
    simulate(run_config(**{**TINY_RUN, "num-server-rounds": 1}, strategy="fedadam"))
    run = _only_run()
    first = _summary(run)
    assert first["status"] == "finished"
    assert "ssim-x_pl-x_su_prime" in first["sites"]["site-1"]
    checkpoint = torch.load(run / "checkpoints" / "round-0001.pt", weights_only=True)
    assert set(checkpoint["strategy"]) == {"m_t", "v_t"}  # FedAdam's moments survive a restart
    # The dashboard shows the run's settings from the start, and the sites' stages while they prepare.
    info, records = prepared[0]
    assert info["status"] == "preparing" and info["config"]["strategy"] == "fedadam" and "classes" not in info
    assert [record.site for record in records] == ["site-1", "site-2", "site-3"]
    assert {record.stage for record in prepared[-1][1]} == {Stage.READY}
    assert re.search(r"site-\d: (waiting|loading data|IQEM step|converting image|measuring quality)", caplog.text)
    assert not any((fesf_home / "progress").iterdir())  # the run's progress folder is gone

    # Held back 1.5 s each, the resumed run's replies let the server read that the sites' surrogates were cached.
    prepared.clear()
    simulate(run_config(**TINY_RUN, strategy="fedadam", resume=run.name), instrument=Delay(1.5, "query.prepare"))
    assert {record.stage for record in prepared[-1][1]} == {Stage.CACHED}
    resumed = _summary(run)
    assert resumed["status"] == "finished"
    assert [entry["round"] for entry in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]  # round 1 was not run again
    assert resumed["flower_run"] != first["flower_run"]


@pytest.mark.parametrize(
    "changed,message",
    [
        ({"model": "resnet34"}, "model: run {} used 'smallcnn', not 'resnet34'"),
        ({"seed": 3}, "seed: run {} used 0, not 3"),
    ],
)
def test_resuming_with_a_different_model_or_seed_is_refused(finished_run, changed, message):
    run = runs_folder() / finished_run.folder.name
    shutil.copytree(finished_run.folder, run)
    settings, site_defaults = parse_run_settings(run_config(**TINY_RUN, **changed, resume=run.name))
    with pytest.raises(ConfigError, match=re.escape("run config " + message.format(run.name))):
        run_federation(None, settings, site_defaults, "ignored")  # type: ignore[arg-type]  # refused before any grid use
    assert _summary(run)["status"] == "finished"


def test_resuming_with_another_split_or_a_run_split_before_validation_is_refused(finished_run):
    run = runs_folder() / finished_run.folder.name
    shutil.copytree(finished_run.folder, run)
    settings, site_defaults = parse_run_settings(
        run_config(**TINY_RUN, resume=run.name, **{"site.data.val_fraction": 0.2})
    )
    with pytest.raises(
        ConfigError, match="run config site.data.val_fraction: .* used None, not 0.2; .* keeps its sites' split"
    ):
        run_federation(None, settings, site_defaults, "ignored")  # type: ignore[arg-type]  # refused before any grid use
    # A run stored before the split had a validation part: its sites' data would change under its checkpoint.
    with sqlite3.connect(run / "store.sqlite") as store:
        store.execute("DELETE FROM info WHERE key = 'split_version'")
    store.close()
    settings, site_defaults = parse_run_settings(run_config(**TINY_RUN, resume=run.name))
    with pytest.raises(ConfigError, match="split by an older FESF-Fed .* start a new run"):
        run_federation(None, settings, site_defaults, "ignored")  # type: ignore[arg-type]  # refused before any grid use


def test_resuming_an_unknown_run_is_a_clear_error():
    settings, site_defaults = parse_run_settings(run_config(resume="12345"))
    with pytest.raises(ConfigError, match="resume: no run '12345'"):
        run_federation(None, settings, site_defaults, "ignored")  # type: ignore[arg-type]  # refused before any grid use


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_flwr_run_runs_the_app_and_leaves_a_summary(tmp_path, fesf_home):
    http_port, control_port = _free_port(), _free_port()
    flwr = Path(sys.executable).with_name("flwr")
    # flwr starts `flower-superlink` (and it `flwr-simulation`) from PATH, which flower_env puts first.
    env = flower_env(
        FLWR_HOME=str(tmp_path / "flwr"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
    )
    # The default data, the built-in demo set (it must travel in the app Flower ships to the sites), kept tiny.
    tiny = "num-server-rounds=1 local-epochs=1 site.data.image_size=16 site.iqem.steps=2"
    try:
        done = subprocess.run(
            [str(flwr), "run", ".", "--stream", "--run-config", tiny],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,  # the exit status is asserted below, with the output
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "Round 1/1: accuracy" in output
        summary = _summary(_only_run())
        assert summary["status"] == "finished"
        assert set(summary["final"]["sites"]) == {"site-1", "site-2", "site-3"}
    finally:
        # `flwr run` leaves its local SuperLink running in the background: stop it by PID (what `make stop` does).
        stop_local_superlink(tmp_path / "flwr")


def test_a_bad_run_setting_is_refused_before_any_site_is_asked_and_the_run_ends_failed():
    from flwr.app import Context, RecordDict

    import server.app

    context = Context(run_id=77, node_id=0, node_config={}, state=RecordDict(), run_config=run_config(mode="nonsense"))
    # No grid: the refusal must come before the ServerApp talks to any SuperNode.
    with pytest.raises(ConfigError, match=r"mode: Input should be 'plaintext', 'x_sy', 'x_su' or 'x_su_prime'"):
        server.app.main(None, context)  # type: ignore[arg-type]  # refused before any grid use
    summary = _summary(runs_folder() / "77")
    assert summary["status"] == "failed"
    assert "(got 'nonsense')" in summary["error"]
    assert summary["config"]["mode"] == "nonsense"


def test_a_refused_run_with_a_run_name_is_stored_under_that_name():
    from flwr.app import Context, RecordDict

    import server.app

    config = run_config(mode="nonsense", **{"run-name": "named"})
    context = Context(run_id=78, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    with pytest.raises(ConfigError, match="run config mode: "):
        server.app.main(None, context)  # type: ignore[arg-type]  # refused before any grid use
    # Where fesf-server run, which named the run, looks for its summary.
    summary = RunSummary.read(runs_folder() / "named" / "summary.json")
    assert summary.status == "failed" and summary.error is not None and "(got 'nonsense')" in summary.error
    assert [path.name for path in runs_folder().iterdir()] == ["named"]
