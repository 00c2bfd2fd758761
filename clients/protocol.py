"""What crosses between the ServerApp and the sites' ClientApps, defined once and typed.

The messages, and what each carries (record name: content):

- ``query.describe`` (server to every SuperNode). Reply ``node``: a :class:`NodeDescription`.
- ``query.prepare`` (server to each site; ``config`` holds ``site-index`` for a simulated
  site). Reply ``site``: the site's name; ``data``: a :class:`DataDescription`;
  ``metrics``: image counts and the surrogates' quality figures (SSIM, PSNR).
- ``train`` (Flower's strategies: ``arrays``, ``config`` with ``server-round`` and, for
  FedProx, ``proximal-mu``). Reply ``site``, ``arrays``, ``metrics`` (``num-examples``,
  ``train-loss``).
- ``evaluate`` (``arrays``, ``config``). Reply ``site``, ``metrics`` (``num-examples`` and
  the figures of :meth:`fesf_fed.task.Evaluation.scalars`), ``confusion``: the test split's
  confusion counts (:func:`confusion_record`).

Nothing else crosses: no image, plaintext or surrogate, and no file name or path
(``tests/test_privacy_audit.py`` checks every reply of a real run). docs/design.md,
section 1, has the whole picture.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fesf_fed.errors import FesfError

#: The query actions of the roll call and the preparation (a ClientApp registers ``@app.query(action)``),
#: and their message types (Flower names ``train`` and ``evaluate``).
DESCRIBE_ACTION = "describe"
PREPARE_ACTION = "prepare"
DESCRIBE = f"query.{DESCRIBE_ACTION}"
PREPARE = f"query.{PREPARE_ACTION}"

#: Record names.
CONFIG = "config"
NODE = "node"
SITE = "site"
DATA = "data"
METRICS = "metrics"
ARRAYS = "arrays"
CONFUSION = "confusion"

#: ``config`` keys: which simulated site a message is for (set by ``server.sites.SiteGrid``),
#: and two that Flower's strategies set.
SITE_INDEX = "site-index"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"

#: What a message's content holds by record name.
Record = ArrayRecord | MetricRecord | ConfigRecord

#: ``metrics`` keys that Flower's strategies weigh by, and the training loss.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"


@dataclass(frozen=True)
class NodeDescription:
    """What a SuperNode says at roll call: the deployed site it is, or its simulation partition."""

    site: str | None = None
    partition_id: int | None = None
    num_partitions: int | None = None

    def to_record(self) -> ConfigRecord:
        if self.site is not None:
            return ConfigRecord({"site": self.site})
        if self.partition_id is None or self.num_partitions is None:
            raise ValueError("a NodeDescription names a site, or a partition and the number of partitions")
        return ConfigRecord({"partition-id": self.partition_id, "num-partitions": self.num_partitions})

    @classmethod
    def from_reply(cls, reply: Message) -> "NodeDescription":
        record = _config_record(reply, NODE)
        if "site" in record:
            return cls(site=str(record["site"]))
        return cls(partition_id=_int(record, "partition-id"), num_partitions=_int(record, "num-partitions"))


@dataclass(frozen=True)
class DataDescription:
    """What a prepared site's images are: the classes, channels and size the global model must fit."""

    classes: tuple[str, ...]
    channels: int
    image_size: int

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"classes": list(self.classes), "channels": self.channels, "image-size": self.image_size})

    @classmethod
    def from_reply(cls, reply: Message) -> "DataDescription":
        record = _config_record(reply, DATA)
        classes = record["classes"]
        if not isinstance(classes, list):
            raise FesfError(f"record {DATA!r}: classes is a {type(classes).__name__}, not a list of names")
        return cls(tuple(str(name) for name in classes), _int(record, "channels"), _int(record, "image-size"))


def _config_record(reply: Message, name: str) -> ConfigRecord:
    """The ConfigRecord ``name`` of ``reply``."""
    record = reply.content[name]
    if not isinstance(record, ConfigRecord):
        raise FesfError(f"record {name!r}: a {type(record).__name__}, not a ConfigRecord")
    return record


def _int(record: ConfigRecord, key: str) -> int:
    """The number ``record[key]``, as an int."""
    value = record[key]
    if not isinstance(value, int | float | str):
        raise FesfError(f"record entry {key!r}: a {type(value).__name__}, not a number")
    return int(value)


def site_reply(message: Message, site: str, **records: Record) -> Message:
    """A site's reply to ``message``: ``records`` and the site's name (record ``site``)."""
    return Message(RecordDict({**records, SITE: ConfigRecord({"name": site})}), reply_to=message)


def site_of(reply: Message) -> str:
    """The name of the site that sent ``reply``."""
    return str(reply.content[SITE]["name"])


def metrics_of(reply: Message) -> dict[str, Any]:
    """A reply's scalar metrics, as a plain dict."""
    return dict(reply.content[METRICS].items())


def confusion_record(confusion: list[list[int]]) -> ConfigRecord:
    """A confusion matrix (rows: true class) as the ``confusion`` record: row-major counts.

    A ConfigRecord, not a second MetricRecord: Flower's strategies average the one MetricRecord.
    """
    return ConfigRecord({"counts": [int(count) for row in confusion for count in row]})


def confusion_of(reply: Message, num_classes: int) -> np.ndarray | None:
    """The ``num_classes`` x ``num_classes`` confusion matrix of an evaluate reply; None if it sent none.

    Raises
    ------
    FesfError
        If the counts do not make a matrix of that size.
    """
    if CONFUSION not in reply.content:
        return None
    counts = np.asarray(reply.content[CONFUSION]["counts"], dtype=np.int64)
    if counts.size != num_classes * num_classes:
        raise FesfError(
            f"site {site_of(reply)} sent a confusion matrix of {counts.size} counts for {num_classes} classes"
        )
    return counts.reshape(num_classes, num_classes)


def message_config(message: Message) -> Mapping[str, Any]:
    """The ``config`` record of a message from the server (empty if it has none)."""
    return message.content[CONFIG] if CONFIG in message.content else ConfigRecord()
