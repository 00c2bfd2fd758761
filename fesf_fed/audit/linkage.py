"""Linkage and retrieval: recognise a surrogate's plaintext by its Fourier amplitude.

IHM keeps the host's phase and blends amplitudes inside its low-frequency windows, so (as
long as G stays near the identity) a surrogate's amplitude there is close to
``c_host * A_host + c_plain * A_plain``; the attacker knows the windows and compares only
the coefficients inside them.
Surrogates that share a host therefore differ mainly by their plaintexts' amplitudes.
The attacker, without the key, finds those host groups by clustering the surrogates'
amplitude spectra (k-means, the number of clusters chosen by silhouette), subtracts
each cluster's mean amplitude (leaving the image itself out of its own mean) and
correlates what remains with each candidate plaintext's amplitude, every frequency
standardised across its set. The best-correlated candidate is the guess. With as many
hosts as images there are no host groups, and the plain amplitude is compared instead; the
audit reports the better of the two.

- Linkage (re-identification): the candidates are the victim's plaintexts themselves,
  e.g. the same scans held in another archive; success is top-1, top-5 and one-to-one
  assignment accuracy against chance.
- Retrieval: the candidates are public images; the retrieved image is the attacker's
  reconstruction, scored by SSIM against the plaintext.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score

from fesf_fed.ihm import low_frequency_mask

__all__ = [
    "LinkageFigures",
    "amplitude_spectra",
    "injected_coefficients",
    "linkage_figures",
    "match_scores",
    "remove_host_clusters",
]

#: Cluster counts the attacker tries for the host groups (it does not know the bank's size).
_CLUSTER_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def amplitude_spectra(images: np.ndarray) -> np.ndarray:
    """Half-spectrum Fourier amplitude of each image, flattened: float64 ``(N, C * H * (W // 2 + 1))``.

    Parameters
    ----------
    images : np.ndarray
        uint8 ``(N, C, H, W)`` or float in [0, 1].
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {images.shape}")
    unit = images.astype(np.float64) / 255 if images.dtype == np.uint8 else images.astype(np.float64)
    return np.abs(np.fft.rfft2(unit)).reshape(len(images), -1)


def _standardised(features: np.ndarray) -> np.ndarray:
    """Each frequency centred and scaled across the set, then each row scaled to unit length."""
    centred = features - features.mean(axis=0)
    centred /= centred.std(axis=0) + 1e-12
    centred -= centred.mean(axis=1, keepdims=True)
    return centred / (np.linalg.norm(centred, axis=1, keepdims=True) + 1e-12)


def _cluster_labels(features: np.ndarray, seed: int) -> np.ndarray:
    """Host groups found without the key: k-means on log-amplitude, k by the best silhouette."""
    # Hosts differ in their broad spectra: a few principal components separate them, and make k-means fast.
    logs = np.log1p(features)
    logs = PCA(min(32, *logs.shape), random_state=seed).fit_transform(logs)
    best, labels = -np.inf, np.zeros(len(features), dtype=np.int64)
    for count in _CLUSTER_COUNTS:
        if count == 1:
            continue
        if count * 3 > len(features):  # clusters of fewer than ~3 surrogates leave nothing to average
            break
        with warnings.catch_warnings():
            # Fewer distinct spectra than clusters (identical hosts and plaintexts): the silhouette judges it.
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted = KMeans(count, n_init=3, random_state=seed).fit_predict(logs)
        score = silhouette_score(logs, fitted, sample_size=min(len(logs), 2000), random_state=seed)
        if score > best:
            best, labels = score, fitted
    return labels


def remove_host_clusters(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Subtract from each surrogate's amplitude the mean of its host cluster, itself left out.

    Parameters
    ----------
    features : np.ndarray
        ``(N, F)`` amplitude spectra of surrogates (:func:`amplitude_spectra`).
    seed : int
        Seeds k-means.

    Returns
    -------
    np.ndarray
        ``(N, F)`` residual amplitudes; a surrogate alone in its cluster keeps its own amplitude.
    """
    labels = _cluster_labels(features, seed)
    residual = features.copy()
    for label in np.unique(labels):
        members = labels == label
        count = int(members.sum())
        if count < 2:
            continue
        total = features[members].sum(axis=0)
        residual[members] -= (total - features[members]) / (count - 1)
    return residual


def injected_coefficients(shape: tuple[int, ...], windows: tuple[float, ...]) -> np.ndarray:
    """Which half-spectrum coefficients of a ``(C, H, W)`` image IHM injects plaintext into.

    The attacker knows the IHM windows (the settings are not secret): coefficients outside
    every window carry only the host and G, so comparing them adds noise, not evidence.

    Returns
    -------
    np.ndarray
        Boolean, flattened like :func:`amplitude_spectra`'s rows.
    """
    channels, height, width = shape
    inside = np.zeros((height, width // 2 + 1), dtype=bool)
    for alpha in windows:
        inside |= np.fft.ifftshift(low_frequency_mask(height, width, alpha))[:, : width // 2 + 1]
    return np.tile(inside.reshape(-1), channels)


def match_scores(
    surrogates: np.ndarray,
    candidates: np.ndarray,
    *,
    coefficients: np.ndarray | None = None,
    remove_hosts: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Correlation of every surrogate's (host-free) amplitude with every candidate's amplitude.

    Parameters
    ----------
    surrogates, candidates : np.ndarray
        uint8 ``(N, C, H, W)`` and ``(M, C, H, W)`` images of one size.
    coefficients : np.ndarray, optional
        Boolean mask of the coefficients to compare (:func:`injected_coefficients`); all by default.
    remove_hosts : bool
        Subtract each host cluster's mean first (:func:`remove_host_clusters`). With as
        many hosts as images there are no clusters to average, and the plain amplitude can do better.
    seed : int
        Seeds the host clustering.

    Returns
    -------
    np.ndarray
        float64 ``(N, M)``; row i's largest entry is the attacker's guess for surrogate i.
    """
    if surrogates.shape[1:] != candidates.shape[1:]:
        raise ValueError(f"surrogates {surrogates.shape[1:]} and candidates {candidates.shape[1:]} differ in shape")
    features = amplitude_spectra(surrogates)
    if remove_hosts:
        features = remove_host_clusters(features, seed)
    reference = amplitude_spectra(candidates)
    if coefficients is not None:
        features, reference = features[:, coefficients], reference[:, coefficients]
    return _standardised(features) @ _standardised(reference).T


@dataclass(frozen=True)
class LinkageFigures:
    """How often the attacker names the right plaintext, and what chance would give."""

    candidates: int
    top1: float
    top5: float
    assignment: float
    chance_top1: float
    chance_top5: float


def linkage_figures(scores: np.ndarray, truth: np.ndarray) -> LinkageFigures:
    """Top-1, top-5 and one-to-one assignment accuracy of ``scores`` (rows: surrogates, columns: candidates).

    ``truth[i]`` is the column of surrogate i's own plaintext. The assignment pairs each
    surrogate with a different candidate, maximising the summed score (Hungarian method):
    an attacker who knows each scan was released once.
    """
    rows = np.arange(len(scores))
    own = scores[rows, truth]
    # Ties are broken at random: identical surrogates (nothing of the plaintext in them) name
    # their plaintext by chance, not every time. The own candidate's place is uniform over its ties.
    above = (scores > own[:, None]).sum(axis=1)
    tied = (scores == own[:, None]).sum(axis=1)

    def within(places: int) -> float:
        return float(np.mean(np.clip((places - above) / tied, 0.0, 1.0)))

    columns = scores.shape[1]
    # The same for the assignment: on equal scores the Hungarian method returns the identity,
    # which here would be the truth; candidates in a seeded random order take that away.
    order = np.random.default_rng(0).permutation(columns)
    assigned_rows, assigned_columns = linear_sum_assignment(-scores[:, order])
    assigned = order[assigned_columns[np.argsort(assigned_rows)]]
    assignment = float(np.mean(assigned == truth)) if len(rows) else 0.0
    return LinkageFigures(
        candidates=columns,
        top1=within(1),
        top5=within(5),
        assignment=assignment,
        chance_top1=1 / columns,
        chance_top5=min(5, columns) / columns,
    )
