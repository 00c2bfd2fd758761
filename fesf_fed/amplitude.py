"""Amplitude perturbation: keyed random factors on the plaintext amplitude that IHM injects.

At the paper's settings a surrogate carries the plaintext's Fourier amplitude almost
unchanged (blended with its host's), and that amplitude is a fingerprint: whoever holds
the same scan elsewhere can link the surrogate to it (docs/privacy.md, linkage). This
defence multiplies each coefficient of the injected amplitude by an independent
log-normal factor ``exp(noise * z)``, ``z ~ N(0, 1)``, before both IHM steps blend it in.

The factors are drawn from a generator seeded by HMAC-SHA256 of the image's pixels under
the site's secret key: without the key they are unpredictable, and the same image always
gets the same factors, so converting one scan again (a rebuild, a second diagnosis
request) yields the same surrogate instead of a fresh noisy copy an attacker could
average.
"""

import hashlib
import hmac

import torch

from fesf_fed.pixels import tensor_to_uint8

__all__ = ["amplitude_gains"]

#: Separates this use of the site key from its other uses (host assignment, phantom seed).
_DOMAIN = b"fesf-amplitude-noise\x00"


def amplitude_gains(plain: torch.Tensor, noise: float, key: bytes) -> torch.Tensor:
    """Keyed log-normal factors for the half-spectrum amplitude of each plaintext image.

    Parameters
    ----------
    plain : torch.Tensor
        ``(B, C, H, W)`` float images in [0, 1]: the plaintexts to be hidden.
    noise : float
        Standard deviation of the factors' logarithm, at least 0 (0: every factor is 1).
    key : bytes
        The site's secret key (:func:`fesf_fed.hosts.load_site_key`).

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W // 2 + 1)`` float32 on ``plain``'s device, for :func:`fesf_fed.ihm.hide`'s ``plain_gain``.

    Raises
    ------
    ValueError
        If ``plain`` is not a batch of images, ``noise`` is negative or ``key`` is empty.
    """
    if plain.ndim != 4:
        raise ValueError(f"plain must have shape (B, C, H, W), got {tuple(plain.shape)}")
    if not noise >= 0:
        raise ValueError(f"noise must be at least 0, got {noise}")
    if not key:
        raise ValueError("key must not be empty")
    channels, height, width = plain.shape[1:]
    shape = (channels, height, width // 2 + 1)
    gains = torch.empty((len(plain), *shape))
    # Seeded by the stored 8-bit pixels, so an image read back from a file gets the same factors.
    for number, pixels in enumerate(tensor_to_uint8(plain)):
        digest = hmac.new(key, _DOMAIN + pixels.tobytes(), hashlib.sha256).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big"))
        gains[number] = torch.exp(noise * torch.randn(shape, generator=generator))
    return gains.to(plain.device)
