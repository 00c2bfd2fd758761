"""Split one dataset across simulated sites: IID, or non-IID by a Dirichlet draw per class.

Real federations have one dataset per hospital; simulations carve one dataset into
sites. The Dirichlet scheme is the usual label-skew benchmark (Hsu et al., 2019,
"Measuring the Effects of Non-Identical Data Distribution"): each class is shared
out in proportions drawn from Dirichlet(alpha), so a small alpha gives sites with
very different class mixes.

Groups of images that belong together (near-duplicates, one patient's images:
``ImageSet.groups``) go to one site whole, so a copy of a site's test image cannot sit
in another site's training share either.
"""

from typing import Literal

import numpy as np

from fesf_fed.data.split import group_units
from fesf_fed.errors import DataError

PartitionScheme = Literal["iid", "dirichlet"]


def partition_indices(
    labels: np.ndarray,
    count: int,
    scheme: PartitionScheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_per_class: int = 2,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Share image indices out among ``count`` sites.

    Every site first gets ``min_per_class`` images of every class, so that each can
    still split its share into a training and a test part; the rest of each class is
    shared out evenly (``"iid"``) or in Dirichlet(``alpha``) proportions drawn per
    class (``"dirichlet"``).

    With ``groups``, a group is shared out whole, as one unit of its majority class
    (like :func:`~fesf_fed.data.split.stratified_split`): the minimum is
    ``min_per_class`` groups, and the proportions cut the class's images at the group
    boundary nearest below. Without groups (or with none of two or more images) the
    result is the per-image one.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer class labels.
    count : int
        Number of sites, at least 1.
    scheme : {"iid", "dirichlet"}
        How the images beyond the guaranteed minimum are shared out.
    alpha : float
        Dirichlet concentration, > 0; ignored for ``"iid"``.
    seed : int
        Non-negative seed; the same inputs give the same partition.
    min_per_class : int
        Images (groups) of each class every site is guaranteed.
    groups : np.ndarray, optional
        ``(N,)`` group of each image; images with equal values go to one site.

    Returns
    -------
    list of np.ndarray
        ``count`` sorted int64 index arrays, disjoint, together every index.

    Raises
    ------
    DataError
        If a class has fewer than ``count * min_per_class`` images.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if scheme not in ("iid", "dirichlet"):
        raise ValueError(f"scheme must be 'iid' or 'dirichlet', got {scheme!r}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if seed < 0 or min_per_class < 0:
        raise ValueError(f"seed and min_per_class must be non-negative, got {seed} and {min_per_class}")
    members, majority = group_units(labels, groups)
    sizes = np.array([len(indices) for indices in members], dtype=np.int64)
    what = "image(s)" if groups is None else "group(s) of images"
    rng = np.random.default_rng(seed)
    shares: list[list[np.ndarray]] = [[np.empty(0, np.int64)] for _ in range(count)]
    for label in np.unique(labels):
        units = rng.permutation(np.flatnonzero(majority == label))
        guaranteed = count * min_per_class
        if len(units) < guaranteed:
            raise DataError(
                f"class {int(label)} has {len(units)} {what}, too few to give each of {count} sites "
                f"{min_per_class}: use fewer sites or more images"
            )
        for site in range(count):
            shares[site].extend(members[unit] for unit in units[site * min_per_class : (site + 1) * min_per_class])
        rest = units[guaranteed:]
        if scheme == "iid":
            proportions = np.full(count, 1.0 / count)
        else:
            proportions = rng.dirichlet(np.full(count, alpha))
        # Cut after the last unit that keeps each site within its rounded image count
        # (with one-image units: exactly that count).
        filled = np.cumsum(sizes[rest])
        targets = np.round(np.cumsum(proportions)[:-1] * int(sizes[rest].sum()))
        cuts = np.searchsorted(filled, targets, side="right")
        for site, part in enumerate(np.split(rest, cuts)):
            shares[site].extend(members[unit] for unit in part)
    return [np.sort(np.concatenate(parts)).astype(np.int64) for parts in shares]
