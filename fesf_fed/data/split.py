"""The per-site train/test split, stratified by class."""

import numpy as np


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into a training and a test part, class by class.

    Each class with ``n`` images puts ``n * test_fraction`` of them (rounded half
    up) in the test part, but never all of them or none: a class with two or more
    images has at least one in each part. A class with a single image keeps it for
    training.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer class labels.
    test_fraction : float
        Share of each class that goes to the test part, strictly between 0 and 1.
    seed : int
        Non-negative seed; the same labels, fraction and seed give the same split.

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
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        rounded = int(np.floor(len(members) * test_fraction + 0.5))
        # At least one image on each side; a lone image (count - 1 == 0) stays in training.
        n_test = min(max(rounded, 1), len(members) - 1)
        test_parts.append(members[:n_test])
    test = np.sort(np.concatenate(test_parts or [np.empty(0, np.int64)])).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), test)
    return train, test
