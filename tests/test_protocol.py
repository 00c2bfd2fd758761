"""The wire protocol without Flower, its records in Flower's, and the site grid as a Flower Grid."""

import subprocess
import sys
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.config import parse_config_args
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from clients.cli import _node_config_argument
from fesf_fed.errors import FesfError
from fesf_fed.federation import protocol
from fesf_fed.federation.protocol import DataDescription, NodeDescription, SiteNodeConfig
from server.sites import Site, SiteGrid


def test_the_engine_package_imports_no_flower():
    # Every module of fesf_fed, the protocol included: the engine is usable without Flower.
    code = (
        "import importlib, pkgutil, sys, fesf_fed\n"
        "apps = ('fesf_fed.server', 'fesf_fed.clients')\n"  # in an installed wheel: the apps, not the engine
        "for module in pkgutil.walk_packages(fesf_fed.__path__, 'fesf_fed.'):\n"
        "    if not module.name.startswith(apps):\n"
        "        importlib.import_module(module.name)\n"
        "flower = sorted(name for name in sys.modules if name.startswith('flwr'))\n"
        "assert not flower, flower\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_descriptions_travel_in_flower_records_and_come_back():
    for node in (NodeDescription(site="A"), NodeDescription(partition_id=1, num_partitions=2)):
        assert protocol.node_of(RecordDict({protocol.NODE: ConfigRecord(node.to_config())})) == node
    data = DataDescription(("glioma", "healthy"), 1, 64)
    content = RecordDict(
        {
            protocol.DATA: ConfigRecord(data.to_config()),
            protocol.SITE: ConfigRecord(protocol.site_record("A")),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 12}),
            protocol.CONFUSION: ConfigRecord(protocol.confusion_record([[3, 1], [0, 4]])),
        }
    )
    assert protocol.data_of(content) == data
    assert protocol.site_of(content) == "A"
    assert protocol.metrics_of(content) == {protocol.NUM_EXAMPLES: 12}
    confusion = protocol.confusion_of(content, 2)
    assert confusion is not None and np.array_equal(confusion, [[3, 1], [0, 4]])
    assert protocol.config_of(content) == {}
    assert protocol.config_of({protocol.CONFIG: ConfigRecord({protocol.SITE_INDEX: 2})}) == {protocol.SITE_INDEX: 2}


def test_a_malformed_record_is_one_line():
    with pytest.raises(FesfError, match="^record 'data': classes is a str, not a list of names$"):
        DataDescription.from_config({"classes": "glioma", "channels": 1, "image-size": 64})
    with pytest.raises(FesfError, match="^record 'node': no entry 'num-partitions'$"):
        NodeDescription.from_config({"partition-id": 1})
    with pytest.raises(FesfError, match="^a message without the record 'site'$"):
        protocol.site_of({})
    content = {protocol.SITE: {"name": "A"}, protocol.CONFUSION: {"counts": [1, 2, 3]}}
    with pytest.raises(FesfError, match="^site A sent a confusion matrix of 3 counts for 2 classes$"):
        protocol.confusion_of(content, 2)


class _Recorder(Grid):
    """A grid that records what it is sent and gives each message an id."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return [7, 8]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.sent.append(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self.push_messages(messages)
        return []


def test_the_site_grid_is_a_flower_grid_that_forwards_to_the_hosting_node(monkeypatch):
    # The ServerApp's messages need a run to belong to, as inside Flower.
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    recorder = _Recorder()
    grid = SiteGrid(recorder, [Site(1, "site-1", 7, 0), Site(2, "site-2", 8, 1), Site(3, "site-3", 7, 2)])
    assert isinstance(grid, Grid)
    assert list(grid.get_node_ids()) == [1, 2, 3]
    assert [node.node_id for node in grid.get_nodes()] == [1, 2, 3]
    message = grid.create_message(RecordDict(), "train", 3, "1")
    sent = grid.push_messages([message])
    assert sent == {"m0": 3}
    forwarded = recorder.sent[0]
    assert (forwarded.metadata.dst_node_id, forwarded.metadata.message_type) == (7, "train")
    assert dict(forwarded.content[protocol.CONFIG]) == {protocol.SITE_INDEX: 2}


def test_a_site_node_config_survives_flowers_node_config_parser():
    node = SiteNodeConfig(site="A", data_dir="/data/St. Mary's", site_config="/etc/site.yaml", device="cpu")
    parsed = parse_config_args([_node_config_argument(node)])
    assert parsed == {"site": "A", "data-dir": "/data/St. Mary's", "site-config": "/etc/site.yaml", "device": "cpu"}
    assert SiteNodeConfig.from_node_config(parsed) == node
    assert SiteNodeConfig.from_node_config({"partition-id": 0, "num-partitions": 2}) is None
