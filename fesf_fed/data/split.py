"""The per-site train/validation/test split: stratified by class, groups kept whole, or MedMNIST's own.

The test part is set aside first; the validation part (``data.val_fraction``) is then
carved from what remains for training, by the same rule, so a group never straddles
any two parts. Validation picks the model (the round or epoch with the best macro-F1);
the test part only reports it.

A group is a set of images that must not straddle the split: near-duplicates of one
scan, or one patient's images (:mod:`fesf_fed.data.duplicates`, ``ImageSet.groups``).
A group goes wholly to the side of its majority class's draw; its images of other
classes (a mixed-label group) go with it, so their class's share can drift a little.
"""

import logging
from typing import Any, NamedTuple

import numpy as np

from fesf_fed.config import DataConfig
from fesf_fed.data.imageset import ImageSet
from fesf_fed.errors import DataError

#: Bumped when a split (or the grouping it keeps whole) changes for the same settings, to key caches anew.
SPLIT_VERSION = 3

logger = logging.getLogger(__name__)


def group_units(labels: np.ndarray, groups: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray]:
    """The images of each group, ordered by its first image, and each group's majority label.

    ``groups`` None makes every image its own group. A tie between labels goes to the smallest.
    """
    labels = np.asarray(labels)
    if groups is None:
        return [np.array([index], np.int64) for index in range(len(labels))], labels.astype(np.int64)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have the shape of labels {labels.shape}, got {groups.shape}")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    # Renumber the groups by their first image, so units come in image order.
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unit_of = rank[inverse.reshape(-1)]
    by_unit = np.argsort(unit_of, kind="stable")
    members = np.split(by_unit.astype(np.int64), np.cumsum(np.bincount(unit_of, minlength=len(order)))[:-1])
    majority = np.array([np.bincount(labels[indices]).argmax() for indices in members], dtype=np.int64)
    return members, majority


def _test_units(sizes: np.ndarray, test_fraction: float) -> list[int]:
    """Which of a class's shuffled units (by position) go to the test part: as close to its share as sizes allow.

    Going through the units in order, each one is taken if that brings the image count
    closer to the target (``test_fraction`` of the class's images, rounded half up), and
    skipped if it would overshoot by more, until the target is reached; at least one
    unit (the smallest, if all overshoot) and never all. With single-image units this is
    exactly the first ``target`` of them, the target clipped to 1 .. n-1.
    """
    total = int(sizes.sum())
    target = min(max(int(np.floor(total * test_fraction + 0.5)), 1), total - 1)
    chosen: list[int] = []
    count = 0
    for position, size in enumerate(sizes.tolist()):
        if count >= target or len(chosen) == len(sizes) - 1:
            break
        if count + size - target <= target - count:
            chosen.append(position)
            count += size
    if not chosen and len(sizes) > 1:
        chosen = [int(np.argmin(sizes))]
    return chosen


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into a training and a test part, class by class, groups kept whole.

    Each class with ``n`` images puts ``n * test_fraction`` of them (rounded half
    up) in the test part, but never all of them or none: a class with two or more
    images has at least one in each part. A class with a single image keeps it for
    training.

    With ``groups``, each group is one unit of its majority class: a class's units are
    shuffled, and each is taken for the test part if that brings the part closer to the
    class's share, until it is reached; at least one unit and never all (a class of one
    unit trains). Images of other classes in a group follow it. Without groups (or with
    none of two or more images) the split is the plain per-image one above.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer class labels.
    test_fraction : float
        Share of each class that goes to the test part, strictly between 0 and 1.
    seed : int
        Non-negative seed; the same labels, groups, fraction and seed give the same split.
    groups : np.ndarray, optional
        ``(N,)`` group of each image; images with equal values stay on one side.

    Returns
    -------
    train, test : np.ndarray
        Sorted int64 indices into ``labels``; disjoint, and together every index.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    members, majority = group_units(labels, groups)
    sizes = np.array([len(indices) for indices in members], dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_parts = [np.empty(0, np.int64)]
    for label in np.unique(labels):
        units = np.flatnonzero(majority == label)
        if len(units) == 0:  # its images all sit in groups where another class is the majority
            continue
        # The same draw as a per-image split when every unit is one image.
        order = rng.permutation(units)
        test_parts.extend(members[order[position]] for position in _test_units(sizes[order], test_fraction))
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), test)
    return train, test


#: The seed of the public host draw: fixed, so the public part is the same for every site and data.seed.
PUBLIC_HOSTS_SEED = 1729


def public_host_split(data: ImageSet, fraction: float, official: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Set aside ``fraction`` of ``data`` as public hosts: a fixed part that is never trained or tested on.

    Parameters
    ----------
    data : ImageSet
        The whole source, its groups (near-duplicates, patients) found.
    fraction : float
        Share of the images (of the official train part, with ``official``) set aside,
        strictly between 0 and 1: per class, whole groups, by :func:`stratified_split`
        with :data:`PUBLIC_HOSTS_SEED`, so no copy of a host stays in the site's images.
    official : bool
        Draw only from a MedMNIST file's ``train/`` part, leaving its val and test parts whole.

    Returns
    -------
    kept, public : np.ndarray
        Sorted int64 indices into ``data``; disjoint, and together every image.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}")
    everything = np.arange(len(data), dtype=np.int64)
    eligible = np.ones(len(data), bool)
    if official:
        eligible = np.array([image_id.startswith("train/") for image_id in data.ids])
        if data.groups is not None:
            # A group with a member in the val or test part stays whole with it: no host's copy is tested on.
            outside = np.unique(data.groups[~eligible])
            eligible &= ~np.isin(data.groups, outside)
    within = everything[eligible]
    public = np.empty(0, np.int64)
    if len(within) >= 2:
        _, public = _grouped_split(data, fraction, PUBLIC_HOSTS_SEED, within)
    if len(public) == 0:
        raise DataError(
            f"no whole group of near-duplicates among {len(within)} eligible images can be spared as public hosts; "
            "add images or lower data.public_hosts"
        )
    return np.setdiff1d(everything, public), public


class SiteSplit(NamedTuple):
    """A site's image indices by part: sorted int64, disjoint, together every image. ``val`` may be empty."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        """The parts by name (``train``, ``val``, ``test``), as the surrogate cache stores them."""
        return self._asdict()


def official_split(ids: list[str]) -> SiteSplit:
    """A MedMNIST file's own split, from ids ``"<split>/<index>"``: its ``train/``, ``val/`` and ``test/`` parts.

    Raises
    ------
    DataError
        If an id is not a MedMNIST one, or the training or test part ends up empty.
    """
    parts = np.array([image_id.partition("/")[0] for image_id in ids])
    unknown = sorted(set(parts.tolist()) - {"train", "val", "test"})
    if unknown:
        raise DataError(f"data.split 'official' needs MedMNIST ids (train/, val/, test/), got {unknown[0]!r}/...")
    split = SiteSplit(*(np.flatnonzero(parts == name).astype(np.int64) for name in SiteSplit._fields))
    if len(split.test) == 0 or len(split.train) == 0:
        empty = "test" if len(split.test) == 0 else "training"
        raise DataError(
            f"data.split 'official': no image of the file's {empty} split is left "
            "(data.max_per_class or the site's share took none); use data.split 'random'"
        )
    return split


def _grouped_split(data: ImageSet, fraction: float, seed: int, within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stratified_split` of the images ``within`` (indices into ``data``), their groups kept whole."""
    groups = None if data.groups is None else data.groups[within]
    kept, taken = stratified_split(data.labels[within], fraction, seed, groups)
    return within[kept], within[taken]


def site_split(data: ImageSet, config: DataConfig) -> SiteSplit:
    """A site's training, validation and test indices into ``data``, as ``config`` asks (the one place they are decided).

    ``data.split`` ``"official"``: the MedMNIST file's own parts (:func:`official_split`);
    ``"random"``: :func:`stratified_split` with ``data.groups`` kept whole, first the test
    part (``data.test_fraction`` of the images), then the validation part
    (``data.val_fraction`` of the rest; none when it is 0, or when the rest is too small to
    spare an image: then the site does not validate, with a warning).
    """
    if config.split == "official":
        split = official_split(data.ids)
    else:
        rest, test = _grouped_split(data, config.test_fraction, config.seed, np.arange(len(data), dtype=np.int64))
        if len(test) == 0 or len(rest) == 0:
            groups = len(np.unique(data.groups)) if data.groups is not None else len(data)
            raise DataError(
                f"{len(data)} images in {groups} group(s) of copies: no group is left for the "
                f"{'test' if len(test) == 0 else 'training'} part; add images, or set data.group_duplicates false "
                "(or lower data.duplicate_distance) if they are not copies"
            )
        val = np.empty(0, np.int64)
        if config.val_fraction > 0:
            # Another seed than the test draw's, so the two draws do not mirror each other.
            train, val = _grouped_split(data, config.val_fraction, config.seed + 1, rest)
            if len(val) and len(train):
                rest = train
            else:  # too few images (or groups) to spare any: the site trains on all and does not validate
                val = np.empty(0, np.int64)
        split = SiteSplit(rest, val, test)
    if len(split.val) == 0 and (config.split == "official" or config.val_fraction > 0):
        logger.warning(
            "%d training images and no validation part (too few groups to spare, or the official split's val "
            "part holds none of them): this site will not validate (a federation picks its model by the other "
            "sites' validation, or takes the last round's)",
            len(split.train),
        )
    untested = sorted(set(data.labels[split.train].tolist()) - set(data.labels[split.test].tolist()))
    if untested:
        names = ", ".join(repr(data.classes[label]) for label in untested)
        logger.warning(
            "class(es) %s have no test image: all their images are one group (copies of each other or "
            "one patient), or the official split has none; test figures leave them out",
            names,
        )
    return split


def split_key(config: DataConfig) -> dict[str, Any]:
    """The settings a site's split depends on (beside the data itself), for cache keys."""
    return {
        "version": SPLIT_VERSION,
        **config.model_dump(
            mode="json",
            include={
                "split",
                "test_fraction",
                "val_fraction",
                "seed",
                "group_duplicates",
                "duplicate_distance",
                "group_pattern",
            },
        ),
    }
