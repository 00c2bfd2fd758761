"""The participation policy: a round's minimums hold, missing sites are recorded, a short run ends degraded or failed."""

import time
import uuid
from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fesf_fed.errors import FesfError
from server import participation
from server.cli import main as fesf_server
from server.dashboard.runs import read_details
from server.participation import TooFewSites, gather
from server.run_store import StoredRun, runs_folder
from server.sites import Site, SiteGrid
from tests.simulation import TINY_RUN, SiteDown, run_config, simulate


class _Grid:
    """A grid whose nodes answer by script: per node, one outcome per attempt (the last one repeats)."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script = script
        self.attempts: dict[int, int] = {node: 0 for node in script}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's grids do when they send
            node = message.metadata.dst_node_id
            outcomes = self.script[node]
            outcome = outcomes[min(self.attempts[node], len(outcomes) - 1)]
            self.attempts[node] += 1
            if outcome == "ok":
                replies.append(Message(RecordDict({}), reply_to=message))
            elif outcome == "offline":
                replies.append(Message(Error(ErrorCode.NODE_UNAVAILABLE, "the SuperNode is offline"), reply_to=message))
            elif outcome == "crash":
                replies.append(
                    Message(
                        Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "<class 'MemoryError'>:<'out of memory'>"),
                        reply_to=message,
                    )
                )
            # "silent": no reply within the timeout
        return replies


@pytest.fixture
def flower_task(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)  # Flower's messages need a run, as inside Flower
    monkeypatch.setattr(participation, "RETRY_SECONDS", 0.05)


def _sites(script: dict[int, list[str]]) -> tuple[SiteGrid, _Grid, list[Message]]:
    grid = _Grid(script)
    sites = SiteGrid(grid, [Site(node, name, node, None) for node, name in zip(script, "ABC")])  # type: ignore[arg-type]
    messages = [
        Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type="train") for node in script
    ]
    return sites, grid, messages


def test_an_unreachable_site_is_asked_again_until_it_answers_and_a_failed_one_is_not(flower_task):
    sites, grid, messages = _sites({1: ["offline", "offline", "ok"], 2: ["crash"], 3: ["ok"]})
    replies = gather(sites, messages, minimum=2, timeout=5, phase="train", server_round=2, setting="min-train-nodes")
    # A's SuperNode came back on the third try; B's ClientApp failed and would fail again.
    assert grid.attempts == {1: 3, 2: 1, 3: 1}
    assert replies.missing == {"B": "its ClientApp failed: MemoryError: out of memory"}
    assert [reply.metadata.src_node_id for reply in replies.replies] == [1, 3]


def test_a_phase_with_enough_replies_does_not_wait_for_the_missing_ones(flower_task):
    sites, grid, messages = _sites({1: ["offline"], 2: ["ok"], 3: ["ok"]})
    replies = gather(sites, messages, minimum=2, timeout=60, phase="train", server_round=1, setting="min-train-nodes")
    assert grid.attempts[1] == 1 and replies.missing == {"A": "its SuperNode is offline"}


def test_too_few_replies_by_round_timeout_is_one_line_naming_the_missing_sites(flower_task):
    sites, _, messages = _sites({1: ["offline"], 2: ["silent"], 3: ["ok"]})
    began = time.monotonic()
    with pytest.raises(TooFewSites) as refused:
        gather(sites, messages, minimum=2, timeout=0.5, phase="train", server_round=4, setting="min-train-nodes")
    assert time.monotonic() - began < 5  # asked again until round-timeout, not forever
    assert str(refused.value) == (
        "round 4: 1 of 3 sampled sites sent a train reply, 2 needed (min-train-nodes); "
        "missing A: its SuperNode is offline; B: no reply within round-timeout (0.5 s)"
    )


def test_a_round_short_of_its_minimum_fails_resumably_and_a_round_without_a_site_leaves_the_run_degraded(capsys):
    # Every site must train (min-train-nodes 3); site-1 fails in round 2: the run fails there, resumably.
    config = {**TINY_RUN, "run-name": "short", "min-train-nodes": 3, "round-timeout": 30}
    with pytest.raises(FesfError):
        simulate(run_config(**config), instrument=SiteDown(0, 2))
    run = StoredRun(runs_folder() / "short")
    try:
        info = run.info()
        assert info["status"] == "failed"
        assert info["error"] == (
            "round 2: 2 of 3 sampled sites sent a train reply, 3 needed (min-train-nodes); missing site-1: its "
            "ClientApp failed: site 1 is down (a test's fault); "
            "resume it with --run-config \"resume='short'\" (flwr run . or fesf-server run)"
        )
        checkpoint = run.latest_checkpoint_path()
        assert (
            run.last_round() == 1 and checkpoint is not None and checkpoint.name == "round-0001.pt"
        )  # round 2 left nothing
    finally:
        run.close()

    # Resumed with two sites enough, round 2 goes on without site-1: degraded, not finished.
    outcome = simulate(
        run_config(**{**config, "run-name": "", "min-train-nodes": 2, "resume": "short"}), instrument=SiteDown(0, 2)
    )
    summary = outcome.summary
    assert summary.status == "degraded" and summary.final is not None and summary.error is None
    # The summary holds the settings the resumed run was given, and keeps the run's name.
    assert (summary.config["min-train-nodes"], summary.config["run-name"], summary.config["resume"]) == (2, "short", "")
    (absence,) = summary.absences
    assert absence.to_json() == {
        "round": 2,
        "phase": "train",
        "site": "site-1",
        "reason": "its ClientApp failed: site 1 is down (a test's fault)",
    }
    assert "site-1" in summary.history[0].train and "site-1" not in summary.history[1].train
    assert read_details(runs_folder(), "short").absences == {2: {"train": {"site-1": absence.reason}}}
    # The operator's one line, and an exit status a script can test.
    assert fesf_server(["status", "short"]) == 1
    assert capsys.readouterr().out.strip() == (
        "run short: degraded, round 2 of 2: finished without every site: site site-1 missing from round 2 "
        "(its ClientApp failed: site 1 is down (a test's fault))"
    )
