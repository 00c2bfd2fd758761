"""Near-duplicate images and the groups a split must keep together.

Real datasets repeat scans: the same slice exported twice, a re-scan of the same patient,
a mirrored copy. A random train/test split then puts copies of test images into
training and overstates accuracy. This module finds such copies with a perceptual hash
(a DCT "pHash": the signs of an image's lowest 8 x 8 spatial frequencies against their
median, 64 bits) and joins them, with any named groups (a patient id), into groups that
:func:`~fesf_fed.data.split.stratified_split` and
:func:`~fesf_fed.data.partition.partition_indices` keep whole.

Two images are near-duplicates when their hashes differ in at most ``max_distance``
bits, or one's hash is within that distance of the other's mirror image (left-right
flip), and their 32 x 32 thumbnails (every channel), in the orientation that matched,
still correlate at :data:`MIN_CORRELATION` or more once what the whole dataset has in
common (its mean thumbnail, fitted per image with an offset and a gain) is taken out.
The second test stops chains: in a dataset of look-alike scans (fundus photographs,
chest X-rays framed alike) hashes and plain correlation link different patients too,
and linked pairs join transitively. An offset and gain of the intensities (another
window or contrast) keeps a copy a copy. Sets of fewer than :data:`MIN_TEMPLATE_IMAGES`
images have no reliable mean, and use plain correlation. Images with identical pixels
are always duplicates.
"""

import hashlib
from collections.abc import Sequence

import numpy as np
from scipy.fft import dctn
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

#: The thumbnail side the hash is computed from (the usual pHash size).
THUMBNAIL = 32
#: Lowest frequencies kept per axis: 8 x 8 = 64 hash bits.
_HASH_SIDE = 8
#: Correlation of the thumbnails, dataset mean taken out, that a hash match must also reach.
#: On Br35H at 64 px it keeps every pair with SSIM >= 0.9 in one group; on RetinaMNIST,
#: where every fundus looks alike at 28 px, a lower value starts to chain hundreds of images.
MIN_CORRELATION = 0.85
#: Fewest images whose mean thumbnail is taken out before correlating (below: plain correlation).
MIN_TEMPLATE_IMAGES = 50
#: Hash distances are compared block by block, this many rows at a time (memory: rows x N bytes).
_BLOCK = 2048


def _area_matrix(size: int, out: int) -> np.ndarray:
    """``(out, size)`` weights that average the input pixels under each output pixel (area resize)."""
    edges = np.linspace(0.0, size, out + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """``(N, C, 32, 32)`` float32 thumbnails of uint8 ``(N, C, H, W)`` images (area resize)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    rows = _area_matrix(images.shape[2], THUMBNAIL).astype(np.float32)
    columns = _area_matrix(images.shape[3], THUMBNAIL).astype(np.float32)
    thumbs = np.empty((len(images), images.shape[1], THUMBNAIL, THUMBNAIL), np.float32)
    step = max(1, 2**24 // max(1, images[0].size))  # bounds the float copy of big images
    for start in range(0, len(images), step):
        thumbs[start : start + step] = rows @ images[start : start + step].astype(np.float32) @ columns.T
    return thumbs


def _pack(bits: np.ndarray) -> np.ndarray:
    """``(N, 64)`` booleans as ``(N,)`` uint64."""
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def perceptual_hashes(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit DCT hash of each thumbnail and of its mirror image.

    Parameters
    ----------
    thumbs : np.ndarray
        ``(N, C, 32, 32)`` thumbnails (:func:`thumbnails`); the hash is of their channel mean.

    Returns
    -------
    hashes, mirrored : np.ndarray
        ``(N,)`` uint64 each: bit ``8 v + u`` is set when the DCT coefficient of vertical
        frequency v and horizontal frequency u is above the median of the 64 (DC included).
        A left-right flip only flips the sign of the odd horizontal frequencies, so the
        mirror's hash needs no second transform.
    """
    grey = thumbs.mean(axis=1)
    low = dctn(grey, axes=(1, 2), norm="ortho")[:, :_HASH_SIDE, :_HASH_SIDE].reshape(len(thumbs), -1)
    sign = np.where(np.arange(_HASH_SIDE) % 2 == 1, -1.0, 1.0)
    flipped = (low.reshape(len(thumbs), _HASH_SIDE, _HASH_SIDE) * sign).reshape(len(thumbs), -1)
    hashes = [_pack(coefficients > np.median(coefficients, axis=1, keepdims=True)) for coefficients in (low, flipped)]
    return hashes[0], hashes[1]


def _common_basis(thumbs: np.ndarray) -> np.ndarray:
    """Orthonormal ``(D, k)`` basis of what every thumbnail shares: a constant and, for big sets, their mean."""
    flat = thumbs.reshape(len(thumbs), -1)
    vectors = [np.ones(flat.shape[1])]
    if len(thumbs) >= MIN_TEMPLATE_IMAGES:
        vectors.append(flat.mean(axis=0, dtype=np.float64))
    basis, _ = np.linalg.qr(np.stack(vectors, axis=1))
    return basis.astype(np.float32)


def _correlations(
    thumbs: np.ndarray, basis: np.ndarray, first: np.ndarray, second: np.ndarray, mirrored: np.ndarray
) -> np.ndarray:
    """Correlation of thumbnail pairs with ``basis`` projected out, the second flipped where ``mirrored``."""
    b = thumbs[second]
    b = np.where(mirrored[:, None, None, None], b[..., ::-1], b)
    a, b = (part.reshape(len(part), -1) for part in (thumbs[first], b))
    a = a - (a @ basis) @ basis.T
    b = b - (b @ basis) @ basis.T
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # A flat image correlates with nothing (identical pixels are matched separately).
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a), np.float32), where=norms > 0)


def near_duplicate_pairs(images: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of images that are near-duplicates (module docstring), mirrored ones included.

    Parameters
    ----------
    images : np.ndarray
        uint8 ``(N, C, H, W)``.
    max_distance : int
        Most hash bits (of 64) two near-duplicates may differ in.

    Returns
    -------
    np.ndarray
        ``(P, 2)`` int64, sorted.
    """
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be between 0 and 64, got {max_distance}")
    images = np.asarray(images)
    if len(images) < 2:
        return np.empty((0, 2), np.int64)
    thumbs = thumbnails(images)
    hashes, mirrored = perceptual_hashes(thumbs)
    firsts, seconds, flips = [], [], []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start : start + _BLOCK, None]
        for mirror, others in ((False, hashes), (True, mirrored)):
            close = np.bitwise_count(block ^ others[None, :]) <= max_distance
            first, second = np.nonzero(close)
            first += start
            keep = first < second
            firsts.append(first[keep])
            seconds.append(second[keep])
            flips.append(np.full(int(keep.sum()), mirror))
    first, second, flip = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(flips)
    basis = _common_basis(thumbs)
    similar = np.zeros(len(first), bool)
    step = max(1, 2**22 // thumbs[0].size)  # pairs per batch: bounds their float copies
    for start in range(0, len(first), step):
        part = slice(start, start + step)
        similar[part] = _correlations(thumbs, basis, first[part], second[part], flip[part]) >= MIN_CORRELATION
    pairs = np.stack([first[similar], second[similar]], axis=1)
    pairs = np.concatenate([pairs, exact_duplicate_pairs(images)])
    return np.unique(pairs, axis=0).astype(np.int64).reshape(-1, 2)


def exact_duplicate_pairs(images: np.ndarray) -> np.ndarray:
    """Pairs ``(first, other)`` of images with identical pixels: each copy linked to the first one."""
    # Keyed by a digest, not the pixels: a second copy of a large dataset would not fit in memory.
    digests: dict[bytes, int] = {}
    pairs = []
    for index, image in enumerate(np.asarray(images)):
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        first = digests.setdefault(digest, index)
        if first != index:
            pairs.append((first, index))
    return np.array(pairs, np.int64).reshape(-1, 2)


def named_group_pairs(names: Sequence[str | None]) -> np.ndarray:
    """Pairs linking each image to the first image with the same group name; None is no group."""
    first_of: dict[str, int] = {}
    pairs = []
    for index, name in enumerate(names):
        if name is not None:
            first = first_of.setdefault(name, index)
            if first != index:
                pairs.append((first, index))
    return np.array(pairs, np.int64).reshape(-1, 2)


def group_labels(count: int, *pairs: np.ndarray) -> np.ndarray:
    """Union-find over ``count`` images: the group of each, linked by any of ``pairs``.

    Returns
    -------
    np.ndarray
        ``(count,)`` int64; a group is numbered by its first image's index, so the
        numbers depend only on the images' order.
    """
    edges = np.concatenate([np.empty((0, 2), np.int64), *pairs]).astype(np.int64)
    graph = coo_array((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max(initial=-1) + 1, count, np.int64)
    np.minimum.at(first, component, np.arange(count))
    return first[component]


def group_members(groups: np.ndarray) -> list[np.ndarray]:
    """The indices of every group of two or more images, largest first (ties: by first index)."""
    groups = np.asarray(groups)
    numbers, counts = np.unique(groups, return_counts=True)
    shared = numbers[counts > 1]
    members = [np.flatnonzero(groups == number) for number in shared]
    return sorted(members, key=lambda indices: (-len(indices), int(indices[0])))
