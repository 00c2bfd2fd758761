"""What crosses between the ServerApp and the sites' ClientApps, defined once and typed, without Flower.

The messages, and what each carries (record name: content):

- ``query.describe`` (server to every SuperNode; ``config`` empty). Reply ``node``: a
  :class:`NodeDescription` (:meth:`NodeDescription.to_config`).
- ``query.prepare`` (server to each site; ``config`` holds ``site-index`` for a simulated
  site). Reply ``site``: the site's name (:func:`site_record`); ``data``: a
  :class:`DataDescription` (:meth:`DataDescription.to_config`); ``metrics``: image counts
  (``train-examples``, ``val-examples``, ``test-examples``) and the surrogates' quality
  figures (SSIM, PSNR).
- ``train`` (Flower's strategies: ``arrays``, ``config`` with ``server-round`` and, for
  FedProx, ``proximal-mu``, with ``dp-aggregate = "client-fixed"`` Flower's ``clipping_norm``;
  ``site-index`` for a simulated site). Reply ``site``, ``arrays``, ``metrics``
  (``num-examples``, ``train-loss``; with DP-SGD, ``dp-sgd-epsilon``).
- ``evaluate`` (``arrays``, ``config`` with ``server-round``; ``site-index`` for a simulated
  site). Reply ``site``, ``metrics`` (``num-examples`` and the figures of
  :meth:`fesf_fed.task.Evaluation.scalars`: ``auroc`` only where the test split holds two
  classes or more), ``confusion``: the test split's confusion counts (:func:`confusion_record`);
  ``val-confusion``: the validation split's, from which the server picks the best round's
  model (absent when the site holds no validation images).

``arrays`` is an ArrayRecord, ``metrics`` a MetricRecord, every other record a
ConfigRecord. Flower's records and a message's content (a RecordDict) are Mappings, so
this module reads them as Mappings and writes plain dicts that the apps wrap in Flower's
records (``ConfigRecord(description.to_config())``); it imports nothing from Flower, so
the engine package stays Flower-free.

Nothing else crosses: no image, plaintext or surrogate, and no file name or path
(``tests/test_privacy_audit.py`` checks every reply of a real run). docs/design.md,
section 1, has the whole picture.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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
VAL_CONFUSION = "val-confusion"

#: ``config`` keys: which simulated site a message is for (set by ``server.sites.SiteGrid``),
#: and three that Flower's strategies set: the last by its client-side DP wrapper, for its
#: ``fixedclipping_mod`` at the site (Flower's ``KEY_CLIPPING_NORM``).
SITE_INDEX = "site-index"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
CLIPPING_NORM = "clipping_norm"

#: ``metrics`` keys that Flower's strategies weigh by, and the training loss.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
#: The train reply's DP-SGD epsilon: the privacy the site has spent in all its rounds of the run
#: so far, at the run's ``dp-sgd-delta`` (only with DP-SGD).
DP_SGD_EPSILON = "dp-sgd-epsilon"
#: ``metrics`` keys of a prepare reply: the site's training, validation and test image counts.
TRAIN_EXAMPLES = "train-examples"
VAL_EXAMPLES = "val-examples"
TEST_EXAMPLES = "test-examples"
#: The evaluate reply's macro AUROC: the one figure a site may leave out (its test split holds one class),
#: so the one key in which the sites' metric records may differ.
AUROC = "auroc"

#: What a ConfigRecord entry may hold: Flower's ``flwr.app.typing.ConfigRecordValues``,
#: spelled out here so that a dict of them is what ``ConfigRecord(...)`` takes.
ConfigValue = int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]


@dataclass(frozen=True)
class SiteNodeConfig:
    """A deployed site's node config: who the site is and where its images and settings are.

    ``fesf-client`` writes it (``flower-supernode --node-config``, paths made absolute from
    its working directory); the ClientApp reads it from ``context.node_config``. A simulated
    SuperNode has Flower's ``partition-id`` and ``num-partitions`` instead, and no ``site``.
    """

    site: str
    data_dir: str | None = None
    site_config: str | None = None
    hosts_dir: str | None = None
    device: str | None = None

    def to_node_config(self) -> dict[str, str]:
        """The node config's entries (``site``, ``data-dir``, ``site-config``, ``hosts-dir``, ``device``), set ones only."""
        values = {"site": self.site, "data-dir": self.data_dir, "site-config": self.site_config}
        values |= {"hosts-dir": self.hosts_dir, "device": self.device}
        return {key: value for key, value in values.items() if value is not None}

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> "SiteNodeConfig | None":
        """The deployed site a node config names; None for a simulated SuperNode's."""
        if "site" not in node_config:
            return None

        def entry(key: str) -> str | None:
            return str(node_config[key]) if key in node_config else None

        return cls(
            site=str(node_config["site"]),
            data_dir=entry("data-dir"),
            site_config=entry("site-config"),
            hosts_dir=entry("hosts-dir"),
            device=entry("device"),
        )


@dataclass(frozen=True)
class NodeDescription:
    """What a SuperNode says at roll call: the deployed site it is, or its simulation partition."""

    site: str | None = None
    partition_id: int | None = None
    num_partitions: int | None = None

    def to_config(self) -> dict[str, ConfigValue]:
        """The ``node`` record's entries: ``site``, or ``partition-id`` and ``num-partitions``."""
        if self.site is not None:
            return {"site": self.site}
        if self.partition_id is None or self.num_partitions is None:
            raise ValueError("a NodeDescription names a site, or a partition and the number of partitions")
        return {"partition-id": self.partition_id, "num-partitions": self.num_partitions}

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> "NodeDescription":
        """The description in a ``node`` record (:meth:`to_config`'s entries).

        Raises
        ------
        FesfError
            If the record names neither a site nor a partition.
        """
        if "site" in record:
            return cls(site=str(record["site"]))
        return cls(partition_id=_int(record, NODE, "partition-id"), num_partitions=_int(record, NODE, "num-partitions"))


@dataclass(frozen=True)
class DataDescription:
    """What a prepared site's images are: the classes, channels and size the global model must fit."""

    classes: tuple[str, ...]
    channels: int
    image_size: int
    #: The surrogates' host bank: source, count and fingerprint, no path
    #: (:func:`fesf_fed.training_data.host_bank_label`); empty in plaintext mode.
    host_bank: str = ""

    def to_config(self) -> dict[str, ConfigValue]:
        """The ``data`` record's entries: ``classes``, ``channels``, ``image-size`` and ``host-bank``."""
        return {
            "classes": list(self.classes),
            "channels": self.channels,
            "image-size": self.image_size,
            "host-bank": self.host_bank,
        }

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> "DataDescription":
        """The description in a ``data`` record (:meth:`to_config`'s entries).

        Raises
        ------
        FesfError
            If an entry is missing or is not what it should be.
        """
        classes = _entry(record, DATA, "classes")
        if not isinstance(classes, list):
            raise FesfError(f"record {DATA!r}: classes is a {type(classes).__name__}, not a list of names")
        return cls(
            tuple(str(name) for name in classes),
            _int(record, DATA, "channels"),
            _int(record, DATA, "image-size"),
            str(record.get("host-bank", "")),
        )


def record_of(content: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The record ``name`` of a message's content (``message.content``).

    Raises
    ------
    FesfError
        If the content has no such record, or it is not a record of entries.
    """
    if name not in content:
        raise FesfError(f"a message without the record {name!r}")
    record = content[name]
    if not isinstance(record, Mapping):
        raise FesfError(f"record {name!r}: a {type(record).__name__}, not a record of entries")
    return record


def _entry(record: Mapping[str, Any], name: str, key: str) -> Any:
    """The entry ``key`` of the record ``name``."""
    if key not in record:
        raise FesfError(f"record {name!r}: no entry {key!r}")
    return record[key]


def _int(record: Mapping[str, Any], name: str, key: str) -> int:
    """The number ``record[key]`` of the record ``name``, as an int."""
    value = _entry(record, name, key)
    if not isinstance(value, int | float | str):
        raise FesfError(f"record {name!r}: entry {key!r} is a {type(value).__name__}, not a number")
    try:
        return int(value)
    except ValueError:
        raise FesfError(f"record {name!r}: entry {key!r} is {value!r}, not a number") from None


def node_of(content: Mapping[str, Any]) -> NodeDescription:
    """The :class:`NodeDescription` in a roll-call reply's content (record ``node``)."""
    return NodeDescription.from_config(record_of(content, NODE))


def data_of(content: Mapping[str, Any]) -> DataDescription:
    """The :class:`DataDescription` in a prepare reply's content (record ``data``)."""
    return DataDescription.from_config(record_of(content, DATA))


def site_record(site: str) -> dict[str, ConfigValue]:
    """The ``site`` record's entries, which every site reply but the roll call's carries: its ``name``."""
    return {"name": site}


def site_of(content: Mapping[str, Any]) -> str:
    """The name of the site that sent a reply, from its content (record ``site``)."""
    return str(_entry(record_of(content, SITE), SITE, "name"))


def metrics_of(content: Mapping[str, Any]) -> dict[str, Any]:
    """A reply's scalar metrics (record ``metrics``), as a plain dict."""
    return dict(record_of(content, METRICS).items())


def confusion_record(confusion: list[list[int]]) -> dict[str, ConfigValue]:
    """A confusion matrix (rows: true class) as the ``confusion`` record's entries: row-major ``counts``.

    A ConfigRecord, not a second MetricRecord: Flower's strategies average the one MetricRecord.
    """
    return {"counts": [int(count) for row in confusion for count in row]}


def confusion_of(content: Mapping[str, Any], num_classes: int, record: str = CONFUSION) -> np.ndarray | None:
    """The ``num_classes`` x ``num_classes`` confusion matrix in an evaluate reply's content; None if it sent none.

    ``record`` is :data:`CONFUSION` (the test split's) or :data:`VAL_CONFUSION` (the validation split's).

    Raises
    ------
    FesfError
        If the counts do not make a matrix of that size.
    """
    if record not in content:
        return None
    counts = np.asarray(_entry(record_of(content, record), record, "counts"), dtype=np.int64)
    if counts.size != num_classes * num_classes:
        raise FesfError(
            f"site {site_of(content)} sent a {record} matrix of {counts.size} counts for {num_classes} classes"
        )
    return counts.reshape(num_classes, num_classes)


def config_of(content: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``config`` record of a message from the server, from its content (empty if it has none)."""
    return record_of(content, CONFIG) if CONFIG in content else {}
