"""The privacy guarantee, tested: during a real federation, sites send model arrays and scalars only.

A tiny in-process simulation (x_su_prime mode, the default) runs with every ClientApp
handler instrumented: each reply a site sends is deflated into the objects Flower puts
on the wire and written to a folder (handlers run in Ray actor processes, so files are
how they report back). Every recorded reply then goes through :func:`audit`, which
lists everything a reply carries beyond what the protocol allows:

- the record names of its message type, and the record types, exactly;
- in an ArrayRecord, exactly the model's state dict: names, shapes, dtypes, and buffers
  that hold the array and nothing more;
- no image-shaped array at all;
- scalar metrics under the expected keys, and short, path-free config values;
- none of the site's file names, folders, FESF_HOME or secret keys, as text or bytes;
- no 64-pixel run of any plaintext or surrogate image, as uint8 or float32 bytes.

The sites read PNG files from a folder with telling names, so that file names and
paths exist to leak. The negative controls smuggle data into a real reply in several
ways and check that the same :func:`audit` names each one.
"""

import functools
import json
import pickle
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from PIL import Image

from fesf_fed.config import SURROGATE_KINDS
from fesf_fed.data.phantom import phantom_dataset
from fesf_fed.federation.settings import parse_run_settings, simulated_site_configs
from fesf_fed.models import build_model
from fesf_fed.quality import QUALITY_PAIRS
from fesf_fed.training_data import load_site_data
from server.run_store import runs_folder
from tests.simulation import TINY_RUN, Handler, run_config, simulate

#: No dimension of a SmallCNN parameter (1, 2, 3, 16, 32, 64) is 24, so an array with a 24 x 24
#: tail, or with 24 in its shape, can only be an image (asserted in ``audited_run``).
IMAGE_SIZE = 24
PER_CLASS = 12
NUM_SITES = 3
ROUNDS = 2
SUPERNODES = 2
#: What a site's data folder, files and patients are called: text that must never leave the site.
DATA_FOLDER = "ward7-radiology-archive"
PATIENT = "mrn-0048213"

#: Per message type, the records a reply may hold: name -> record type. Nothing else.
RECORDS: dict[str, dict[str, type]] = {
    "query.describe": {"node": ConfigRecord},
    "query.prepare": {"data": ConfigRecord, "metrics": MetricRecord, "site": ConfigRecord},
    "train": {"arrays": ArrayRecord, "metrics": MetricRecord, "site": ConfigRecord},
    "evaluate": {
        "metrics": MetricRecord,
        "site": ConfigRecord,
        "confusion": ConfigRecord,
        "val-confusion": ConfigRecord,
    },
}
_QUALITY = {f"{measure}-{reference}-{stage}" for _, reference, stage in QUALITY_PAIRS for measure in ("ssim", "psnr")}
#: Per (message type, record name), the keys that record may hold. Also exact: 576 scalar
#: metrics "px-0" ... could carry an image as well as one array.
KEYS: dict[tuple[str, str], set[str]] = {
    ("query.describe", "node"): {"partition-id", "num-partitions"},
    ("query.prepare", "data"): {"classes", "channels", "image-size", "host-bank"},
    ("query.prepare", "metrics"): {"train-examples", "val-examples", "test-examples", *_QUALITY},
    # With DP-SGD, the epsilon the site has spent: a function of the run's settings and its image count.
    ("train", "metrics"): {"num-examples", "train-loss", "dp-sgd-epsilon"},
    ("evaluate", "metrics"): {
        "num-examples",
        "loss",
        "accuracy",
        "balanced-accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
    },
    ("evaluate", "confusion"): {"counts"},
    ("evaluate", "val-confusion"): {"counts"},
    **{(kind, "site"): {"name"} for kind in ("query.prepare", "train", "evaluate")},
}
#: Keys of KEYS a record may leave out: a site whose test split holds one class has no AUROC to send, and
#: one that trains without DP-SGD no epsilon.
OPTIONAL: dict[tuple[str, str], set[str]] = {
    ("evaluate", "metrics"): {"auroc"},
    ("train", "metrics"): {"dp-sgd-epsilon"},
}
#: Records of RECORDS a reply may leave out: a site with no validation part sends no validation counts.
OPTIONAL_RECORDS: dict[str, set[str]] = {"evaluate": {"val-confusion"}}
#: Longest string a config value may be: site and class names, not documents.
MAX_TEXT = 40
#: Pixels per probe: 64 uint8 pixels are 64 bytes, as float32 256.
PROBE = 64


# --- recording: what a site sends, as Flower sends it ---------------------------------------


def record(reply: Message) -> dict[str, Any]:
    """A reply as it travels: the message type and every deflated object, children first."""
    return {
        "message_type": reply.metadata.message_type,
        "root": reply.object_id,
        "objects": {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(reply).items()},
    }


def inflate(recorded: dict[str, Any]) -> Message:
    """The reply rebuilt from its wire objects alone (a fresh copy on every call)."""
    reply = inflate_object_from_contents(recorded["root"], dict(recorded["objects"]), keep_object_contents=True)
    assert isinstance(reply, Message)
    return reply


def _record_reply(handler: Handler, folder: Path, message: Message, context: Context) -> Message:
    reply = handler(message, context)
    # Written under a temporary name and renamed, so a reader never sees half a file.
    path = folder / f"{uuid.uuid4().hex}.pkl"
    path.with_suffix(".tmp").write_bytes(pickle.dumps(record(reply)))
    path.with_suffix(".tmp").rename(path)
    return reply


@dataclass(frozen=True)
class ReplyRecorder:
    """A ``simulate`` instrument that writes every reply of every handler to ``folder``.

    A module-level class and ``functools.partial`` of a module-level function, so Ray
    can ship it to its actor processes.
    """

    folder: Path

    def __call__(self, handler: Handler) -> Handler:
        return functools.partial(_record_reply, handler, self.folder)


# --- the audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """What stays at the sites: their images, the names around them, their keys."""

    #: Plaintext and surrogate images, uint8 (C, H, W), of every site.
    images: list[np.ndarray]
    #: File names, folder names and paths: no string in a reply may contain one (case-insensitive).
    texts: list[str]
    #: The sites' secret keys.
    keys: list[bytes]

    @functools.cached_property
    def needles(self) -> list[tuple[str, bytes]]:
        """Byte strings no reply may contain (:func:`probes`)."""
        return probes(self)


@dataclass(frozen=True)
class Expected:
    """What a reply may carry for this run's model and data."""

    #: The model's state dict: name -> (shape, dtype), in order.
    state: dict[str, tuple[tuple[int, ...], str]]
    classes: list[str]
    image_size: int
    #: How many validation images each site holds, by site name.
    validation: dict[str, int]


def probes(secrets: Secrets) -> list[tuple[str, bytes]]:
    """Byte strings that prove a leak: runs of 64 pixels of each image, as uint8 and as float32, and the keys.

    A run of nearly uniform pixels (the black background) could match innocent bytes,
    so only runs with at least 16 distinct values are used; every image gives some.
    """
    needles = [(f"site key {index}", key) for index, key in enumerate(secrets.keys)]
    for number, image in enumerate(secrets.images):
        pixels = image.reshape(-1)
        runs = [pixels[start : start + PROBE] for start in range(0, pixels.size - PROBE + 1, PROBE // 2)]
        runs = [run for run in runs if len(np.unique(run)) >= 16]
        assert runs, f"image {number} has no run of distinct pixels to probe for"
        for run in runs[:: max(1, len(runs) // 4)]:  # a few per image, spread over it
            needles.append((f"image {number} (uint8)", run.tobytes()))
            needles.append((f"image {number} (float32)", run.astype(np.float32).tobytes()))
            needles.append((f"image {number} (float32 / 255)", (run.astype(np.float32) / 255).tobytes()))
    return needles


def _image_like(shape: tuple[int, ...], size: int) -> bool:
    return size in shape or (len(shape) >= 2 and shape[-2:] == (size, size))


def _check_text(where: str, text: str, secrets: Secrets, problems: list[str]) -> None:
    lowered = text.lower()
    for secret in secrets.texts:
        if secret.lower() in lowered:
            problems.append(f"{where}: {text!r} contains {secret!r}")
    if "/" in text or "\\" in text:
        problems.append(f"{where}: {text!r} holds a path separator")
    if len(text) > MAX_TEXT:
        problems.append(f"{where}: a {len(text)}-character string")


def _check_arrays(where: str, arrays: ArrayRecord, expected: Expected, problems: list[str]) -> None:
    names = list(arrays.keys())
    if names != list(expected.state):
        extra, missing = set(names) - set(expected.state), set(expected.state) - set(names)
        problems.append(f"{where}: array names differ from the model's state dict (extra {extra}, missing {missing})")
    for name, array in arrays.items():
        shape = tuple(array.shape)
        if _image_like(shape, expected.image_size):
            problems.append(f"{where}[{name!r}]: image-shaped array {shape}")
        if name not in expected.state:
            problems.append(f"{where}[{name!r}]: unexpected array {shape} {array.dtype}")
            continue
        if (shape, array.dtype) != expected.state[name]:
            problems.append(f"{where}[{name!r}]: {shape} {array.dtype}, expected {expected.state[name]}")
        # The buffer holds the array and nothing more: nothing appended, no other format.
        if array.stype != "numpy.ndarray" or Array(array.numpy()).data != array.data:
            problems.append(f"{where}[{name!r}]: buffer is not exactly the serialised array")


def _check_metrics(where: str, metrics: MetricRecord, problems: list[str]) -> None:
    for key, value in metrics.items():
        if type(value) not in (int, float):
            problems.append(f"{where}[{key!r}]: not a scalar ({type(value).__name__})")


def _check_config(where: str, config: ConfigRecord, expected: Expected, secrets: Secrets, problems: list[str]) -> None:
    for key, value in config.items():
        if key == "classes" and value != expected.classes:
            problems.append(f"{where}[{key!r}]: {value!r}, not the run's classes {expected.classes}")
        # Where the hosts came from in a few words; a phantom bank's key-derived fingerprint stays home.
        if key == "host-bank" and not re.fullmatch(
            r"(folder|dataset), \d+ hosts, sha256 [0-9a-f]{12}|phantom, \d+ hosts|", str(value)
        ):
            problems.append(f"{where}[{key!r}]: {value!r} is more than the bank's source, size and fingerprint")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                _check_text(f"{where}[{key!r}]", item, secrets, problems)
            elif type(item) not in (int, float, bool):
                problems.append(f"{where}[{key!r}]: a {type(item).__name__} value")


def _check_confusion(where: str, confusion: Any, expected: Expected, tested: Any, problems: list[str]) -> None:
    """A confusion matrix is counts: one per (true, predicted) class pair, adding up to the images ``tested``."""
    # A record of the wrong type is reported by audit; here it holds no counts, no number tested.
    sent = confusion.get("counts", []) if isinstance(confusion, ConfigRecord) else []
    cells = sent if isinstance(sent, list) else [sent]
    counts = [count for count in cells if type(count) is int and count >= 0]
    if len(counts) != len(cells) or len(counts) != len(expected.classes) ** 2:
        problems.append(f"{where}: not {len(expected.classes)}x{len(expected.classes)} non-negative counts")
    elif sum(counts) != tested:
        problems.append(f"{where}: counts add up to {sum(counts)}, not the {tested} tested")


def audit(recorded: dict[str, Any], expected: Expected, secrets: Secrets) -> list[str]:
    """Everything in a recorded reply that a site must not send; empty for a clean reply."""
    kind = recorded["message_type"]
    if kind not in RECORDS:
        return [f"unknown message type {kind!r}"]
    reply = inflate(recorded)
    if reply.has_error():
        return [f"{kind}: an error reply ({reply.error.reason})"]
    problems: list[str] = []
    allowed = RECORDS[kind]
    if not set(allowed) - OPTIONAL_RECORDS.get(kind, set()) <= set(reply.content) <= set(allowed):
        problems.append(f"{kind}: records {sorted(reply.content)}, expected {sorted(allowed)}")
    for name, content in reply.content.items():
        where = f"{kind}/{name}"
        _check_text(where, name, secrets, problems)
        if name in allowed and type(content) is not allowed[name]:
            problems.append(f"{where}: a {type(content).__name__}, expected a {allowed[name].__name__}")
        allowed_keys = KEYS.get((kind, name), set())
        if (
            not isinstance(content, ArrayRecord)
            and not allowed_keys - OPTIONAL.get((kind, name), set()) <= set(content) <= allowed_keys
        ):
            problems.append(f"{where}: keys {sorted(content)}, expected {sorted(allowed_keys)}")
        for key in content:
            _check_text(f"{where} key", key, secrets, problems)
        if isinstance(content, ArrayRecord):
            _check_arrays(where, content, expected, problems)
        elif isinstance(content, MetricRecord):
            _check_metrics(where, content, problems)
        else:
            _check_config(where, content, expected, secrets, problems)
    if kind == "evaluate" and {"confusion", "metrics"} <= set(reply.content):
        metrics = reply.content["metrics"]
        tested = metrics.get("num-examples") if isinstance(metrics, MetricRecord) else None
        _check_confusion(f"{kind}/confusion", reply.content["confusion"], expected, tested, problems)
    if kind == "evaluate" and "val-confusion" in reply.content:
        site = reply.content["site"].get("name") if isinstance(reply.content.get("site"), ConfigRecord) else None
        validated = expected.validation.get(site) if isinstance(site, str) else None
        _check_confusion(f"{kind}/val-confusion", reply.content["val-confusion"], expected, validated, problems)
    # The bytes that travel, and each array's buffer whole (the wire may split it into chunks).
    blobs = [b"".join(recorded["objects"].values())]
    blobs += [
        array.data
        for record_ in reply.content.values()
        if isinstance(record_, ArrayRecord)
        for array in record_.values()
    ]
    found = {label for label, needle in secrets.needles if any(needle in blob for blob in blobs)}
    problems += [f"{kind}: the bytes of {label}" for label in sorted(found)]
    # Short texts (".png") could occur by chance in binary data; they are checked in the strings above.
    lowered = [blob.lower() for blob in blobs]
    for text in secrets.texts:
        if len(text) >= 8 and any(text.encode().lower() in blob for blob in lowered):
            problems.append(f"{kind}: the text {text!r} in its bytes")
    return problems


# --- the run --------------------------------------------------------------------------------


@dataclass
class AuditedRun:
    """A finished simulation's recorded replies, with what they may and must not carry."""

    replies: list[dict[str, Any]]
    expected: Expected
    secrets: Secrets


def _write_site_images(folder: Path) -> list[str]:
    """The phantom dataset as PNG files named like a hospital's; return the file names."""
    phantoms = phantom_dataset(PER_CLASS, IMAGE_SIZE)
    names = []
    for index, (image, label) in enumerate(zip(phantoms.images, phantoms.labels)):
        path = folder / phantoms.classes[label] / f"{PATIENT}-slice-{index:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image[0]).save(path)
        names.append(path.name)
    return names


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory: pytest.TempPathFactory) -> AuditedRun:
    """Run the federation once for the module, recording every reply."""
    # The autouse FESF_HOME fixture is per test; this module-wide run needs its own.
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("fesf-home")
        patch.setenv("FESF_HOME", str(home))
        data = tmp_path_factory.mktemp(DATA_FOLDER)
        file_names = _write_site_images(data)
        replies_folder = tmp_path_factory.mktemp("replies")
        config = run_config(
            **{
                **TINY_RUN,
                "num-server-rounds": ROUNDS,
                "num-sites": NUM_SITES,
                "partition": "iid",
                "site.data.source": "folder",
                "site.data.path": str(data),
                "site.data.image_size": IMAGE_SIZE,
                "site.hosts.source": "phantom",
            }
        )
        simulate(config, num_supernodes=SUPERNODES, instrument=ReplyRecorder(replies_folder))

        (run,) = runs_folder().iterdir()
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        settings, site_defaults = parse_run_settings(config)
        assert settings.mode == "x_su_prime"
        sites = simulated_site_configs(settings, site_defaults)
        # The sites made their keys and surrogates in this FESF_HOME: loading reuses them, not rebuilds.
        key_files = [home / "secrets" / f"{site.site}.key" for site in sites]
        assert all(path.is_file() for path in key_files), "the simulated sites did not use this test's FESF_HOME"
        images = []
        validation = {}
        for site in sites:
            for mode in ("plaintext", *SURROGATE_KINDS):
                site_data = load_site_data(site, mode)
                images += [*site_data.train_images, *site_data.val_images, *site_data.test_images]
            validation[site.site] = len(site_data.val_labels)
        classes = site_data.classes
        channels = site_data.channels

    state = {
        name: (tuple(tensor.shape), str(tensor.numpy().dtype))
        for name, tensor in build_model(settings.model, len(classes), channels).state_dict().items()
    }
    # The image-shape check relies on this: no parameter has a dimension of the image size.
    assert not any(_image_like(shape, IMAGE_SIZE) for shape, _ in state.values())
    assert all(image.shape == (channels, IMAGE_SIZE, IMAGE_SIZE) for image in images)
    secrets = Secrets(
        images=images,
        texts=[str(home), str(data), data.name, DATA_FOLDER, *DATA_FOLDER.split("-"), PATIENT, ".png", *file_names],
        keys=[path.read_bytes() for path in key_files],
    )
    replies = [pickle.loads(path.read_bytes()) for path in sorted(replies_folder.glob("*.pkl"))]
    return AuditedRun(replies, Expected(state, list(classes), IMAGE_SIZE, validation), secrets)


def test_every_reply_of_a_real_run_holds_only_model_arrays_and_scalars(audited_run):
    counts: dict[str, int] = {}
    for recorded in audited_run.replies:
        counts[recorded["message_type"]] = counts.get(recorded["message_type"], 0) + 1
    # Every message a site sent was recorded: one roll call per SuperNode, one preparation per
    # site, and a train and an evaluate reply per site and round.
    assert counts == {
        "query.describe": SUPERNODES,
        "query.prepare": NUM_SITES,
        "train": NUM_SITES * ROUNDS,
        "evaluate": NUM_SITES * ROUNDS,
    }
    for recorded in audited_run.replies:
        assert audit(recorded, audited_run.expected, audited_run.secrets) == []


def _first(run: AuditedRun, kind: str) -> Message:
    return inflate(next(recorded for recorded in run.replies if recorded["message_type"] == kind))


def _hide_in_parameter(reply: Message, payload: bytes) -> None:
    """Overwrite the start of a conv kernel's buffer: right name, shape and dtype, only the bytes tell."""
    arrays = reply.content.array_records["arrays"]
    weights = arrays["features.4.weight"].numpy().copy()
    weights.reshape(-1).view(np.uint8)[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    reply.content["arrays"] = ArrayRecord({**dict(arrays.items()), "features.4.weight": Array(weights)})


def _extra_array(reply: Message, secrets: Secrets) -> None:
    reply.content.array_records["arrays"]["leak"] = Array(secrets.images[0])


def _plaintext_in_parameter(reply: Message, secrets: Secrets) -> None:
    _hide_in_parameter(reply, secrets.images[0].tobytes())


def _surrogate_in_parameter(reply: Message, secrets: Secrets) -> None:
    # The last image is an x_su_prime one, hidden as the float32 in [0, 1] that training uses.
    _hide_in_parameter(reply, (secrets.images[-1].astype(np.float32) / 255).tobytes())


def _key_in_parameter(reply: Message, secrets: Secrets) -> None:
    _hide_in_parameter(reply, secrets.keys[0])


def _flattened_image_as_parameter(reply: Message, secrets: Secrets) -> None:
    reply.content.array_records["arrays"]["features.0.bias"] = Array(secrets.images[0].reshape(-1).astype(np.float32))


def _arrays_in_evaluate(reply: Message, secrets: Secrets) -> None:
    reply.content["arrays"] = ArrayRecord({"features.0.bias": Array(secrets.images[0])})


def _pixels_as_metric_list(reply: Message, secrets: Secrets) -> None:
    reply.content.metric_records["metrics"]["loss"] = secrets.images[0].reshape(-1).astype(float).tolist()


def _pixels_as_confusion_counts(reply: Message, secrets: Secrets) -> None:
    reply.content.config_records["confusion"]["counts"] = secrets.images[0].reshape(-1).astype(int).tolist()


def _pixels_as_validation_counts(reply: Message, secrets: Secrets) -> None:
    reply.content.config_records["val-confusion"]["counts"] = secrets.images[0].reshape(-1).astype(int).tolist()


def _pixels_as_metrics(reply: Message, secrets: Secrets) -> None:
    for index, value in enumerate(secrets.images[0].reshape(-1)[:32]):
        reply.content.metric_records["metrics"][f"px-{index}"] = int(value)


def _file_name_as_site_name(reply: Message, secrets: Secrets) -> None:
    reply.content.config_records["site"]["name"] = secrets.texts[-1]


def _data_folder_word_as_class(reply: Message, secrets: Secrets) -> None:
    reply.content.config_records["data"]["classes"] = ["lesion", "radiology"]


def _path_as_class(reply: Message, secrets: Secrets) -> None:
    reply.content.config_records["data"]["classes"] = ["lesion", "normal/x"]


def _image_bytes_in_config(reply: Message, secrets: Secrets) -> None:
    reply.content.config_records["site"]["name"] = secrets.images[0].tobytes()


def _extra_record(reply: Message, secrets: Secrets) -> None:
    reply.content["debug"] = ConfigRecord({"note": "ok"})


#: Ways to smuggle data out in a real reply: the reply's type, the smuggling, and what the audit
#: must say about it (the check that catches it even if every other check were gone).
SMUGGLING = [
    pytest.param("train", _extra_array, "unexpected array (1, 24, 24)", id="image-as-extra-array"),
    pytest.param("train", _plaintext_in_parameter, "the bytes of image 0 (uint8)", id="plaintext-in-parameter"),
    pytest.param("train", _surrogate_in_parameter, "(float32 / 255)", id="surrogate-in-parameter"),
    pytest.param("train", _key_in_parameter, "the bytes of site key 0", id="site-key-in-parameter"),
    pytest.param("train", _flattened_image_as_parameter, "(576,) float32, expected", id="flat-image-as-parameter"),
    pytest.param(
        "evaluate",
        _arrays_in_evaluate,
        "records ['arrays', 'confusion', 'metrics', 'site', 'val-confusion']",
        id="arrays-in-evaluate",
    ),
    pytest.param("evaluate", _pixels_as_metric_list, "not a scalar (list)", id="pixels-as-metric-list"),
    pytest.param("evaluate", _pixels_as_confusion_counts, "not 2x2 non-negative counts", id="pixels-as-confusion"),
    pytest.param(
        "evaluate",
        _pixels_as_validation_counts,
        "val-confusion: not 2x2 non-negative counts",
        id="pixels-as-val-counts",
    ),
    pytest.param("train", _pixels_as_metrics, "keys ['num-examples', 'px-0'", id="pixels-as-metrics"),
    pytest.param("train", _file_name_as_site_name, "contains 'mrn-0048213'", id="file-name-as-site-name"),
    pytest.param("query.prepare", _data_folder_word_as_class, "contains 'radiology'", id="folder-word-as-class"),
    pytest.param("query.prepare", _path_as_class, "path separator", id="path-as-class"),
    pytest.param("train", _image_bytes_in_config, "a bytes value", id="image-bytes-in-config"),
    pytest.param("query.describe", _extra_record, "records ['debug', 'node']", id="extra-record"),
]


@pytest.mark.parametrize(("kind", "smuggle", "complaint"), SMUGGLING)
def test_the_audit_catches_a_reply_that_smuggles_data(audited_run, kind, smuggle, complaint):
    reply = _first(audited_run, kind)
    assert audit(record(reply), audited_run.expected, audited_run.secrets) == []  # clean before
    smuggle(reply, audited_run.secrets)
    problems = audit(record(reply), audited_run.expected, audited_run.secrets)
    assert any(complaint in problem for problem in problems), problems
