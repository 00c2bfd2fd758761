"""Load a site's plaintext images from its configured source into an ImageSet.

Four sources (``data.source``):

- ``folder``: one sub-folder per class; class names are the sorted sub-folder names.
- ``medmnist``: an official MedMNIST ``.npz``; its train, val and test splits are
  pooled, because every site re-splits its images itself (ids ``"<split>/<index>"``
  keep each image's official split for ``data.split: official``).
- ``csv``: a manifest with at least the columns ``path`` and ``label``; an optional
  ``group`` column names each image's group (a patient id), kept whole by the split.
- ``phantom``: the built-in generated dataset.
- ``demo``: the built-in real demo set, a PneumoniaMNIST subset shipped with FESF-Fed
  (``fesf_fed/data/demo/``, CC BY 4.0; see the README there).

Files that cannot be used are listed in ``ImageSet.skipped`` with the reason instead
of stopping the load (a file name that is not valid UTF-8, a symbolic link loop, a
broken link or a link to a folder among them); a class left without any usable image is
an error. :func:`check_source` reports all of it at once, without stopping, for
``fesf data check``.
:func:`load_dataset` also finds the groups the split keeps whole (``ImageSet.groups``):
near-duplicate images, the manifest's ``group`` column and ``data.group_pattern``.
:func:`source_fingerprint` identifies the same input without decoding it.
"""

import base64
import binascii
import csv
import errno
import hashlib
import json
import logging
import os
import re
import stat
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fesf_fed.config import DataConfig
from fesf_fed.data.decode import (
    IMAGE_SUFFIXES,
    UnreadableImage,
    image_from_pixels,
    image_notes,
    read_image,
    to_channels,
)
from fesf_fed.data.duplicates import group_labels, named_group_pairs, near_duplicate_pairs
from fesf_fed.data.imageset import ImageSet, SkippedFile
from fesf_fed.data.partition import partition_indices
from fesf_fed.data.phantom import phantom_dataset
from fesf_fed.data.split import public_host_split
from fesf_fed.errors import DataError
from fesf_fed.pixels import unit_to_uint8

_MEDMNIST_SPLITS = ("train", "val", "test")
#: The built-in demo set. JSON, because Flower ships only an app's text files to its SuperNodes.
DEMO_FILE = Path(__file__).parent / "demo" / "pneumoniamnist-demo.json"
_MANIFEST_COLUMNS = ("path", "label")
#: The optional manifest column that names each image's group (a patient id).
_GROUP_COLUMN = "group"
#: A group holding more than this share of a dataset gets a warning: it bends the split.
_LARGE_GROUP_SHARE = 0.1
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    """One candidate image file: its stable id, where it is, its label index and its named group."""

    id: str
    path: Path
    label: int
    group: str | None = None


@dataclass(frozen=True)
class _Listing:
    """The candidate files of a folder or manifest, before anything is decoded."""

    classes: list[str]
    entries: list[_Entry]
    skipped: list[SkippedFile]


#: Why a file or folder whose name is not valid UTF-8 is skipped: image ids are text (they key the hosts).
_NOT_UTF8_FILE = "file name is not valid UTF-8; rename it"
_NOT_UTF8_FOLDER = "folder name is not valid UTF-8; rename it"
_LINK_LOOP = "symbolic link loop; remove the link or point it at an image"


@dataclass
class _Loaded:
    """A source's usable images and what was left out, before they are checked and stacked."""

    images: list[np.ndarray]
    labels: np.ndarray
    ids: list[str]
    classes: list[str]
    skipped: list[SkippedFile]
    #: The source, for messages: its path, or "phantom data".
    where: Path | str
    #: The manifest's group of each image (None: no group), for file sources.
    named_groups: list[str | None] | None = None
    #: The file of each image, for file sources.
    files: list[Path] | None = None


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _is_utf8(name: str) -> bool:
    """Whether a name read from the file system is valid UTF-8 (else it holds surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """``name`` as text that prints and encodes anywhere: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _not_a_file(path: Path) -> str | None:
    """Why an entry of a data folder that is not a regular file is not read; None for a folder, which is."""
    if not path.is_symlink():
        return None if path.is_dir() else "not a regular file (a pipe, socket or device); remove it"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _LINK_LOOP
        if exc.errno == errno.ENOENT:
            return "broken symbolic link (its target does not exist); remove it or fix its target"
        return f"cannot follow the symbolic link ({exc.strerror}); remove it or fix its target"
    if not stat.S_ISDIR(mode):
        return "not a regular file (a pipe, socket or device); remove it"
    if path.parent.resolve().is_relative_to(path.resolve()):
        return "symbolic link loop (it points to a folder that holds it); remove the link"
    return "symbolic link to a folder: not followed; move the folder here, or list its images in a CSV manifest"


def image_files(root: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Every supported image file below ``root`` (recursively), sorted, and those that cannot be read.

    Parameters
    ----------
    root : Path
        The folder; hidden files and folders below it, and files of other types, are left out.

    Returns
    -------
    files : list of Path
        The image files (by :data:`IMAGE_SUFFIXES`), sorted by path.
    skipped : list of SkippedFile
        Entries with an image suffix that cannot be used, by their path relative to
        ``root``, with the reason: a name that is not valid UTF-8 (ids are text), a
        broken link, a link loop, a link to a folder, a pipe or device.
    """
    found, skipped = _folder_entries(root, root, IMAGE_SUFFIXES)
    return sorted(file for _, file in found), skipped


def no_usable_image(folder: Path, skipped: list[SkippedFile]) -> DataError:
    """The one-line error for a folder whose every image file was skipped: how many, and the first with why.

    Parameters
    ----------
    folder : Path
        The folder (a host bank, the scans to diagnose).
    skipped : list of SkippedFile
        What :func:`image_files` or decoding skipped; not empty.
    """
    first = skipped[0]
    return DataError(
        f"{folder}: none of its {len(skipped)} image file(s) can be used; the first, {first.path}: {first.reason}"
    )


def _class_files(root: Path, folder: Path) -> tuple[list[tuple[str, Path]], list[SkippedFile]]:
    """The files below a class folder by id, sorted, and the entries that cannot be read, with the reason."""
    found, skipped = _folder_entries(root, folder)
    return sorted(found, key=lambda item: item[0]), skipped


def _folder_entries(
    root: Path, folder: Path, suffixes: frozenset[str] | None = None
) -> tuple[list[tuple[str, Path]], list[SkippedFile]]:
    """The usable files below ``folder`` by id (relative to ``root``), and the other entries with the reason.

    Only names ending in one of ``suffixes`` (lower-cased) count, when given; hidden entries never do.
    """
    files: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    # rglob does not descend into linked folders, so a link loop cannot trap it; _not_a_file reports them.
    for file in folder.rglob("*"):
        relative = file.relative_to(root)
        if _is_hidden(relative) or (suffixes is not None and file.suffix.lower() not in suffixes):
            continue
        image_id = relative.as_posix()
        if not file.is_file():
            reason = _not_a_file(file)
            if reason is not None:
                skipped.append((_printable(image_id), reason))
        elif not _is_utf8(image_id):
            skipped.append((_printable(image_id), _NOT_UTF8_FILE if not _is_utf8(file.name) else _NOT_UTF8_FOLDER))
        else:
            files.append((image_id, file))
    return files, [SkippedFile(*entry) for entry in sorted(skipped)]


def _list_folder(root: Path) -> _Listing:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; data source 'folder' needs a folder with one sub-folder per class")
    children = sorted(child for child in root.iterdir() if not child.name.startswith("."))
    class_folders: list[Path] = []
    skipped: list[SkippedFile] = []
    for child in children:
        if child.is_dir():
            if child.is_symlink() and root.resolve().is_relative_to(child.resolve()):
                skipped.append(SkippedFile(_printable(child.name), _LINK_LOOP))
            else:
                class_folders.append(child)
        elif child.is_file():
            skipped.append(SkippedFile(_printable(child.name), "not inside a class sub-folder; move it into one"))
        elif (reason := _not_a_file(child)) is not None:
            skipped.append(SkippedFile(_printable(child.name), reason))
    if not class_folders:
        raise DataError(
            f"{root}: no class sub-folders; put each class's images in its own sub-folder, e.g. {root / 'tumor'}"
        )
    entries: list[_Entry] = []
    # The first class folder (by name, links after real folders) to reach each real folder.
    owners: dict[Path, str] = {}
    for folder in sorted(class_folders, key=lambda folder: (folder.is_symlink(), folder.name)):
        owners.setdefault(folder.resolve(), folder.name)
    for label, folder in enumerate(class_folders):
        if not _is_utf8(folder.name):
            # The class stays, empty: its images have no usable ids until the folder is renamed.
            skipped.append(SkippedFile(_printable(folder.name) + "/", _NOT_UTF8_FOLDER))
            continue
        if (owner := owners[folder.resolve()]) != folder.name:
            # The same images under two labels would teach the model nothing true: the class stays, empty.
            reason = f"a link to class folder {_printable(owner)!r}: its images would count under two classes"
            skipped.append(SkippedFile(_printable(folder.name) + "/", f"{reason}; remove the link"))
            continue
        found, left_out = _class_files(root, folder)
        entries.extend(_Entry(image_id, file, label) for image_id, file in found)
        skipped.extend(left_out)
    return _Listing([_printable(folder.name) for folder in class_folders], entries, skipped)


def _list_manifest(manifest: Path) -> _Listing:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [column for column in _MANIFEST_COLUMNS if column not in columns]
            if missing:
                raise DataError(
                    f"{manifest}: missing column(s) {', '.join(missing)}; "
                    f"the first line must be a header naming at least {','.join(_MANIFEST_COLUMNS)}"
                )
            rows = [
                (reader.line_num, row["path"] or "", row["label"] or "", (row.get(_GROUP_COLUMN) or "").strip())
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{manifest}: cannot read the CSV manifest ({exc}); save it as UTF-8 CSV") from None
    skipped = []
    listed: dict[str, tuple[Path, str, str]] = {}
    for line, raw_path, raw_label, group in rows:
        written, label = raw_path.strip(), raw_label.strip()
        image_id = Path(written).as_posix()
        if not written or not label:
            where = f"{manifest.name} line {line}"
            skipped.append(SkippedFile(where, "empty path or label; fill it in or remove the row"))
        elif image_id in listed:
            skipped.append(SkippedFile(image_id, f"listed again on line {line}; remove the duplicate row"))
        else:
            # An absolute path stays as it is; a relative one starts at the CSV's folder.
            listed[image_id] = (manifest.parent / image_id, label, group)
    if not listed:
        raise DataError(f"{manifest}: no image rows; add one line per image with its path and label")
    classes = sorted({label for _, label, _ in listed.values()})
    entries = []
    for image_id, (path, label, group) in listed.items():
        if path.is_file():
            # An empty group cell: the image is a group of its own.
            entries.append(_Entry(image_id, path, classes.index(label), group or None))
        else:
            reason = "file not found; fix the path (relative paths start at the CSV's folder)"
            skipped.append(SkippedFile(image_id, reason))
    return _Listing(classes, entries, skipped)


def _class_orders(labels: np.ndarray, n_classes: int, max_per_class: int | None, seed: int) -> list[np.ndarray]:
    """Per class, the indices in the order they are taken: all of them, or a seeded shuffle."""
    members = [np.flatnonzero(labels == label) for label in range(n_classes)]
    if max_per_class is None:
        return members
    rng = np.random.default_rng(seed)
    return [rng.permutation(indices) for indices in members]


def decode_files(paths: Sequence[Path], size: int, progress: bool) -> list[np.ndarray | UnreadableImage]:
    """Decode files to uint8 ``(C, size, size)`` in parallel; an unreadable file gives its error instead."""

    def decode(path: Path) -> np.ndarray | UnreadableImage:
        try:
            return unit_to_uint8(read_image(path, size))
        except UnreadableImage as exc:
            return exc

    # PIL and NumPy release the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = pool.map(decode, paths)
        return list(
            tqdm(
                results,
                total=len(paths),
                disable=not progress,
                desc="decoding",
                unit="image",
            )
        )


def _decode_sample(
    listing: _Listing, config: DataConfig, progress: bool
) -> tuple[dict[int, np.ndarray], list[SkippedFile]]:
    """Decode up to ``max_per_class`` files of each class: images by entry index, and the unreadable files.

    An unreadable file in the sample is replaced by the next file of its class in the
    seeded order, so a class still gets ``max_per_class`` images when it has enough.
    """
    labels = np.array([entry.label for entry in listing.entries], dtype=np.int64)
    orders = _class_orders(labels, len(listing.classes), config.max_per_class, config.seed)
    wanted = config.max_per_class or len(listing.entries)
    taken = [0] * len(orders)
    usable = [0] * len(orders)
    decoded: dict[int, np.ndarray] = {}
    skipped: list[SkippedFile] = []
    while True:
        batch = []
        for label, order in enumerate(orders):
            more = order[taken[label] : taken[label] + wanted - usable[label]]
            taken[label] += len(more)
            batch.extend(more.tolist())
        if not batch:
            return decoded, skipped
        results = decode_files(
            [listing.entries[index].path for index in batch],
            config.image_size,
            progress,
        )
        for index, result in zip(batch, results):
            if isinstance(result, UnreadableImage):
                skipped.append(SkippedFile(listing.entries[index].id, result.reason))
            else:
                decoded[index] = result
                usable[labels[index]] += 1


def _load_files(listing: _Listing, config: DataConfig, source: Path, progress: bool) -> _Loaded:
    decoded, unreadable = _decode_sample(listing, config, progress)
    kept = sorted(decoded)
    return _Loaded(
        [decoded[index] for index in kept],
        labels=np.array([listing.entries[index].label for index in kept], dtype=np.int64),
        ids=[listing.entries[index].id for index in kept],
        classes=listing.classes,
        skipped=listing.skipped + unreadable,
        where=source,
        named_groups=[listing.entries[index].group for index in kept],
        files=[listing.entries[index].path for index in kept],
    )


def _read_medmnist(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    keys = [f"{split}_{kind}" for split in _MEDMNIST_SPLITS for kind in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in keys if key in archive.files}
    # A damaged archive can fail in zipfile, zlib or the .npy header parser.
    except Exception as exc:  # noqa: BLE001  re-raised as a one-line DataError
        raise DataError(f"{path}: not a readable .npz file ({exc}); download the MedMNIST file again") from None
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; a MedMNIST .npz holds {', '.join(keys)}")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    for split in _MEDMNIST_SPLITS:
        split_images, split_labels = (
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
        )
        grey_or_rgb = split_images.ndim in (3, 4) and split_images.shape[3:] in (
            (),
            (3,),
        )
        if split_images.dtype != np.uint8 or not grey_or_rgb:
            raise DataError(
                f"{path}: {split}_images is {split_images.dtype} {split_images.shape}; "
                "expected uint8 (N, H, W) or (N, H, W, 3) (2-D MedMNIST only)"
            )
        if split_labels.shape not in ((len(split_images),), (len(split_images), 1)):
            raise DataError(
                f"{path}: {split}_labels has shape {split_labels.shape} for {len(split_images)} images; "
                "expected one class label per image (multi-label sets are not supported)"
            )
        images.append(split_images)
        labels.append(split_labels.reshape(-1).astype(np.int64))
        ids.extend(f"{split}/{index}" for index in range(len(split_images)))
    return np.concatenate(images), np.concatenate(labels), ids


def _sample_indices(labels: np.ndarray, n_classes: int, config: DataConfig) -> np.ndarray:
    """Sorted indices of at most ``max_per_class`` images per class (for sources with nothing to skip)."""
    orders = _class_orders(labels, n_classes, config.max_per_class, config.seed)
    return np.sort(
        np.concatenate(
            [
                np.empty(0, np.int64),
                *(order[: config.max_per_class] for order in orders),
            ]
        )
    )


def _read_demo() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The demo set's pixels, labels, ids and class names, checked against the SHA-256 it records."""
    try:
        record = json.loads(DEMO_FILE.read_text())
        raw = zlib.decompress(base64.b64decode(record["pixels"], validate=True))
        damaged = hashlib.sha256(raw).hexdigest() != record["sha256"]
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(record["shape"])
        labels = np.asarray(record["labels"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError, zlib.error, binascii.Error):
        damaged = True
    if damaged or len(labels) != len(pixels):
        raise DataError(
            f"{DEMO_FILE}: the demo set is missing or damaged; restore it from the repository (git checkout)"
        )
    return pixels, labels, [f"demo/{index}" for index in range(len(labels))], list(record["classes"])


def _load_arrays(config: DataConfig, path: Path, progress: bool) -> _Loaded:
    """A MedMNIST file at ``path`` or the demo set (``DEMO_FILE``): whole arrays of small images, resized here."""
    if config.source == "demo":
        pixels, labels, ids, classes = _read_demo()
    else:
        pixels, labels, ids = _read_medmnist(path)
        if len(labels) and labels.min() < 0:
            raise DataError(f"{path}: negative class labels; labels must be 0 .. K-1")
        classes = [str(label) for label in range(int(labels.max()) + 1 if len(labels) else 0)]
    keep = _sample_indices(labels, len(classes), config)
    images = [
        unit_to_uint8(image_from_pixels(pixels[index], config.image_size))
        for index in tqdm(keep, disable=not progress, desc="resizing", unit="image")
    ]
    return _Loaded(images, labels[keep], [ids[index] for index in keep], classes, [], path)


def _load_phantom(config: DataConfig) -> _Loaded:
    data = phantom_dataset(config.phantom_per_class, config.image_size, config.seed)
    keep = _sample_indices(data.labels, len(data.classes), config)
    return _Loaded(
        list(data.images[keep]),
        data.labels[keep],
        [data.ids[i] for i in keep],
        data.classes,
        [],
        "phantom data",
    )


def _unusable(loaded: _Loaded) -> str | None:
    """Why a build cannot use these images (one line, without the source), or None when it can."""
    if not loaded.images:
        return f"no usable image ({len(loaded.skipped)} file(s) skipped); add images of each class"
    counts = np.bincount(loaded.labels, minlength=len(loaded.classes))
    empty = [name for name, count in zip(loaded.classes, counts) if count == 0]
    if len(empty) == 1:
        return f"class {empty[0]!r} has no usable image; add images of that class or remove it"
    if empty:
        names = ", ".join(repr(name) for name in empty)
        return f"classes {names} have no usable image; add images of those classes or remove them"
    return None


def _stack(loaded: _Loaded, config: DataConfig) -> ImageSet:
    """Bring at least one image to one channel count and stack them, with the manifest's groups."""
    if config.channels == "auto":
        channels = 1 if all(image.shape[0] == 1 for image in loaded.images) else 3
    else:
        channels = config.channels
    data = ImageSet(
        images=np.stack([to_channels(image, channels) for image in loaded.images]),
        labels=loaded.labels.astype(np.int64),
        ids=loaded.ids,
        classes=list(loaded.classes),
        skipped=loaded.skipped,
    )
    named = named_group_pairs(loaded.named_groups or [])
    if len(named):
        data.groups = group_labels(len(data), named)
    return data


def _assemble(loaded: _Loaded, config: DataConfig) -> ImageSet:
    """Check that every class has images, bring them to one channel count and stack them."""
    problem = _unusable(loaded)
    if problem is not None:
        raise DataError(f"{loaded.where}: {problem}")
    return _stack(loaded, config)


def data_location(config: DataConfig) -> str:
    """Where a site's images come from, for messages: the path, or which built-in set."""
    if config.source == "demo":
        return str(DEMO_FILE)
    return str(config.path) if config.path else "phantom data"


def _existing_path(config: DataConfig) -> Path:
    if config.path is None:  # DataConfig's validator requires a path for these sources
        raise DataError(f"data.path is required for source {config.source!r}")
    path = Path(config.path)
    if not path.exists():
        expected = {"folder": "folder", "medmnist": ".npz file", "csv": "CSV manifest"}[config.source]
        raise DataError(f"{path}: data path not found; set data.path to an existing {expected}")
    return path


@dataclass
class DatasetParts:
    """A configured source, loaded: the site's images and the public host part set aside before them."""

    #: The site's images (its share, public hosts taken out): what it splits, trains and tests on.
    site: ImageSet
    #: The part ``data.public_hosts`` sets aside (``hosts.source: dataset``); None when it is 0.
    public_hosts: ImageSet | None


def load_dataset(config: DataConfig, progress: bool = False) -> ImageSet:
    """Load a site's images as configured (:func:`load_dataset_parts`' ``site``).

    Parameters
    ----------
    config : DataConfig
        The data section of a site config (``path`` already absolute).
    progress : bool
        Show a progress bar over the files.

    Returns
    -------
    ImageSet
        uint8 images ``(N, C, S, S)`` with ``S = config.image_size`` and C from
        ``config.channels`` ("auto": 1 if every image is grey, else 3). With
        ``max_per_class``, a seeded random sample of each class, in source order.
        Without the ``data.public_hosts`` part (:func:`~fesf_fed.data.split.public_host_split`).
        With ``partition.count`` > 1, only this site's share of it
        (:func:`~fesf_fed.data.partition.partition_indices`). ``groups``: the
        near-duplicates (``group_duplicates``), the manifest's ``group`` column and
        ``group_pattern`` matches, joined; found in the whole source before it is
        shared out, so a group never straddles two sites; None when there are none.

    Raises
    ------
    DataError
        If the path is missing, the source is malformed, or a class (or the whole
        set) has no usable image. Single unreadable files are listed in ``skipped``.
    """
    return load_dataset_parts(config, progress).site


def load_dataset_parts(config: DataConfig, progress: bool = False) -> DatasetParts:
    """Load a site's images and the public host part of their source, each decoded once.

    The public part is drawn from the whole source before it is shared out among sites,
    so every site of a simulation gets the same hosts and none holds one of them.

    Raises
    ------
    DataError
        As :func:`load_dataset`.
    """
    data = _with_groups(_assemble(_load_source(config, progress), config), config)
    public = None
    if config.public_hosts:
        try:
            kept, reserved = public_host_split(data, config.public_hosts, official=config.split == "official")
        except DataError as exc:
            raise DataError(f"{data_location(config)}: {exc}") from None
        data, public = data.subset(kept), data.subset(reserved)
    share = config.partition
    if share.count > 1:
        try:
            parts = partition_indices(
                data.labels, share.count, share.scheme, share.alpha, share.seed, groups=data.groups
            )
        except DataError as exc:
            raise DataError(f"{data_location(config)}: {exc}") from None
        data = data.subset(parts[share.index])
    return DatasetParts(site=data, public_hosts=public)


def _pattern_name(pattern: re.Pattern[str], image_id: str) -> str | None:
    """The group ``pattern`` names in ``image_id``: its first group if it has one, else the match; None if none."""
    match = pattern.search(image_id)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def _with_groups(data: ImageSet, config: DataConfig) -> ImageSet:
    """``data`` with its named groups joined to the configured pattern's and to its near-duplicates."""
    links = [] if data.groups is None else [np.stack([data.groups, np.arange(len(data))], axis=1)]
    if config.group_pattern is not None:
        pattern = re.compile(config.group_pattern)
        links.append(named_group_pairs([_pattern_name(pattern, image_id) for image_id in data.ids]))
    if config.group_duplicates:
        links.append(near_duplicate_pairs(data.images, config.duplicate_distance))
    groups = group_labels(len(data), *links)
    data.groups = groups if np.any(groups != np.arange(len(data))) else None
    largest = int(np.bincount(groups).max(initial=0))
    if largest >= 10 and largest > _LARGE_GROUP_SHARE * len(data):
        logger.warning(
            "%s: one group holds %d of %d images; the split keeps it on one side, so the class mix of "
            "train and test drifts. See `fesf data check`; lower data.duplicate_distance if they are not copies",
            data_location(config),
            largest,
            len(data),
        )
    return data


def _load_source(config: DataConfig, progress: bool) -> _Loaded:
    if config.source == "phantom":
        return _load_phantom(config)
    if config.source == "demo":
        return _load_arrays(config, DEMO_FILE, progress)
    path = _existing_path(config)
    if config.source == "medmnist":
        return _load_arrays(config, path, progress)
    listing = _list_folder(path) if config.source == "folder" else _list_manifest(path)
    return _load_files(listing, config, path, progress)


@dataclass
class SourceCheck:
    """Everything ``fesf data check`` reports about a source (:func:`check_source`)."""

    #: Class names, in label order.
    classes: list[str]
    #: Usable images per class, in label order; a class without any included.
    counts: dict[str, int]
    #: The usable images, grouped as a build groups them; None when there is none.
    data: ImageSet | None
    #: Files and links that are left out, with the reason.
    skipped: list[SkippedFile]
    #: Usable images worth a look (tiny, 16-bit, palette...), with what is unusual; one row per note.
    warnings: list[SkippedFile]
    #: Why a build refuses this source (one line, without the path); None when it can be used.
    problem: str | None


def _file_notes(ids: list[str], files: list[Path]) -> list[SkippedFile]:
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        notes = list(pool.map(image_notes, files))
    return [SkippedFile(image_id, note) for image_id, found in zip(ids, notes) for note in found]


def check_source(config: DataConfig, progress: bool = False) -> SourceCheck:
    """Load a source as :func:`load_dataset` does, but report what is wrong instead of stopping at it.

    Parameters
    ----------
    config : DataConfig
        The data section to check (``path`` already absolute).
    progress : bool
        Show a progress bar over the files.

    Returns
    -------
    SourceCheck
        Per-class counts (empty classes included), every skipped file with its reason,
        warnings about usable images (:func:`~fesf_fed.data.decode.image_notes`) and
        ``problem``: the reason :func:`load_dataset` refuses the source, None exactly
        when it loads it.

    Raises
    ------
    DataError
        If the path is missing or the source is malformed (no class sub-folders, a
        manifest without its columns, an unreadable .npz): there is nothing to list.
    """
    loaded = _load_source(config, progress)
    counts = np.bincount(loaded.labels, minlength=len(loaded.classes))
    return SourceCheck(
        classes=list(loaded.classes),
        counts={name: int(count) for name, count in zip(loaded.classes, counts)},
        data=_with_groups(_stack(loaded, config), config) if loaded.images else None,
        skipped=loaded.skipped,
        warnings=[] if loaded.files is None else _file_notes(loaded.ids, loaded.files),
        problem=_unusable(loaded),
    )


def file_digest(path: Path) -> bytes:
    """SHA-256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def source_fingerprint(config: DataConfig) -> str:
    """Identify the exact input of :func:`load_dataset` without decoding any image.

    Parameters
    ----------
    config : DataConfig
        The data section of a site config.

    Returns
    -------
    str
        SHA-256 hex digest of the settings that shape the loaded images (all but
        ``path``, ``test_fraction`` and ``split``) and of every candidate file's id and bytes.
        Editing, adding or removing a file changes it; the same input gives the same
        digest wherever it lives.

    Raises
    ------
    DataError
        If the path is missing or the folder or manifest is malformed.
    """
    # test_fraction and split only move images between the splits; the caller keys the split itself
    # (fesf_fed.data.split.split_key). The grouping settings stay: groups shape a site's share.
    ignored = {"path", "test_fraction", "split"} | ({"phantom_per_class"} if config.source != "phantom" else set())
    # Listed only when set, so the keys of builds made before the setting existed stay valid.
    ignored |= set() if config.public_hosts else {"public_hosts"}
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json", exclude=ignored), sort_keys=True).encode())
    if config.source == "phantom":
        return digest.hexdigest()
    if config.source == "demo":
        digest.update(file_digest(DEMO_FILE))
        return digest.hexdigest()
    path = _existing_path(config)
    if config.source == "medmnist":
        digest.update(file_digest(path))
        return digest.hexdigest()
    if config.source == "csv":
        digest.update(file_digest(path))
        listing = _list_manifest(path)
    else:
        listing = _list_folder(path)
    for entry in listing.entries:
        # NUL separators keep ("a", "bc") and ("ab", "c") apart.
        digest.update(f"{entry.id}\0{listing.classes[entry.label]}\0".encode())
        digest.update(file_digest(entry.path))
    for skipped in listing.skipped:
        digest.update(f"{skipped.path}\0{skipped.reason}\0".encode())
    return digest.hexdigest()
