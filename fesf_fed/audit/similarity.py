"""How close an attack's reconstructions are to the images they target, one image at a time.

SSIM (Wang et al. 2004, "Image quality assessment: from error visibility to structural
similarity") by scikit-image, with the convention of :mod:`fesf_fed.quality`: float images
in [0, 1], ``data_range=1``, channels on axis 0 for colour and a plain 2-D image for grey.
"""

import numpy as np
from skimage.metrics import structural_similarity


def ssim_per_image(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mean SSIM of each test image against its reference image.

    Parameters
    ----------
    reference, test : np.ndarray
        Float ``(N, C, H, W)`` in [0, 1], the same shape; image i of each belongs together.
        Sides must be at least 7 px (scikit-image's default 7 x 7 window).

    Returns
    -------
    np.ndarray
        float64 ``(N,)``: 1 for identical images, near 0 for unrelated ones, negative for
        anti-correlated structure.

    Raises
    ------
    ValueError
        If the shapes differ, are not ``(N, C, H, W)``, or the images are smaller than 7 px.
    """
    if reference.shape != test.shape or reference.ndim != 4:
        raise ValueError(f"reference and test must both be (N, C, H, W), got {reference.shape} and {test.shape}")
    if min(reference.shape[2:]) < 7:
        raise ValueError(f"SSIM needs images of at least 7 x 7 px, got {reference.shape[2:]}")
    # data_range must be given for float images: scikit-image would otherwise guess it from the dtype (-1 to 1).
    if reference.shape[1] > 1:
        scores = [structural_similarity(ref, img, data_range=1.0, channel_axis=0) for ref, img in zip(reference, test)]
    else:
        scores = [structural_similarity(ref[0], img[0], data_range=1.0) for ref, img in zip(reference, test)]
    return np.asarray(scores, dtype=np.float64)


def aligned(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Each test image circularly shifted to where it best matches its reference (peak cross-correlation).

    Reconstructions from gradients of a convolutional network with global pooling come
    back shifted (a shifted image gives almost the same gradient), and a shifted copy of
    the plaintext reveals as much as the plaintext. Scoring after this alignment uses
    the plaintext, so it is a bound in the attacker's favour.

    Parameters
    ----------
    reference, test : np.ndarray
        Float ``(N, C, H, W)``, the same shape.

    Returns
    -------
    np.ndarray
        ``test`` with each image shifted (all channels alike).
    """
    if reference.shape != test.shape or reference.ndim != 4:
        raise ValueError(f"reference and test must both be (N, C, H, W), got {reference.shape} and {test.shape}")
    centred_reference = reference - reference.mean(axis=(-2, -1), keepdims=True)
    centred_test = test - test.mean(axis=(-2, -1), keepdims=True)
    correlation = np.fft.irfft2(
        np.fft.rfft2(centred_reference) * np.conj(np.fft.rfft2(centred_test)), s=reference.shape[-2:]
    ).sum(axis=1)
    shifted = np.empty_like(test)
    for number, surface in enumerate(correlation):
        rows, columns = np.unravel_index(np.argmax(surface), surface.shape)
        shifted[number] = np.roll(test[number], shift=(int(rows), int(columns)), axis=(-2, -1))
    return shifted
