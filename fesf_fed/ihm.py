"""Image Hiding Module (IHM): hide a plaintext image in a host image (paper Eq. 1-4).

IHM keeps the host's Fourier phase and blends the plaintext's Fourier amplitude into
the host's inside a centred low-frequency window (docs/design.md, "IHM: Eq. 1-4")::

    A_sy = [(1 - beta) * A_host + beta * A_plain] * M + A_host * (1 - M)
    x_sy = clamp(Re(ifft2(A_sy * exp(j * P_host))), 0, 1)

Images are real, so their spectra are Hermitian and the window M is symmetric about
the origin; the fast path therefore works on half spectra (``rfft2``/``irfft2``),
which gives ``Re(ifft2(.))`` exactly at half the cost. ``hide_reference`` is the
literal per-image NumPy transcription of the equations: the executable
specification that tests and ``benchmarks/ihm.py`` hold the fast path to.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "HostSpectrum",
    "hide",
    "hide_reference",
    "host_spectrum",
    "low_frequency_mask",
    "mask_coverage",
]


#: Elements of plaintext processed at once on a CPU (one 3 x 256 x 256 image is 196,608).
_CPU_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class HostSpectrum:
    """Half spectra (``rfft2``) of one host ``(C, H, W)`` or a stack ``(N, C, H, W)``.

    Computed once per host bank by :func:`host_spectrum` and reused for every image,
    since Eq. 3-4 only ever read the host's amplitude and phase.

    Attributes
    ----------
    amplitude : torch.Tensor
        ``|F_host|``, float32, ``(..., C, H, W // 2 + 1)``.
    phasor : torch.Tensor
        ``exp(j * angle(F_host))``, complex64, same shape.
    width : int
        The image width W, which a half spectrum does not determine by itself.
    """

    amplitude: torch.Tensor
    phasor: torch.Tensor
    width: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of the host image(s) the spectrum came from."""
        return (*self.amplitude.shape[:-1], self.width)

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | int) -> "HostSpectrum":
        """Select hosts of a stack, e.g. the host assigned to each image of a batch."""
        if self.amplitude.ndim != 4:
            raise IndexError("only a stack of host spectra (N, C, H, W) can be indexed")
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, torch.Tensor):
            index = index.to(self.amplitude.device)
        return HostSpectrum(self.amplitude[index], self.phasor[index], self.width)

    def images(self) -> torch.Tensor:
        """The host image(s) back from the spectrum (the inverse FFT), float32 in [0, 1] up to rounding."""
        return torch.fft.irfft2(self.amplitude * self.phasor, s=self.image_shape[-2:])

    def to(self, device: torch.device | str) -> "HostSpectrum":
        """Return the spectrum on ``device`` (itself when already there)."""
        return HostSpectrum(self.amplitude.to(device), self.phasor.to(device), self.width)


def _check_unit_images(images: torch.Tensor, name: str, ranks: tuple[int, ...]) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim not in ranks:
        shapes = " or ".join("(B, C, H, W)" if r == 4 else "(C, H, W)" for r in ranks)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {images.dtype}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: {tuple(images.shape)}")
    low, high = torch.aminmax(images)  # NaN propagates to both
    if torch.isnan(low) or torch.isnan(high):
        raise ValueError(f"{name} contains NaN")
    if low < 0 or high > 1:
        raise ValueError(f"{name} has values in [{low.item():.4g}, {high.item():.4g}]; scale images to [0, 1]")


def _check_strengths(alpha: float, beta: float) -> None:
    if not 0 < alpha <= 0.5:
        raise ValueError(f"alpha must be in (0, 0.5], got {alpha}")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def low_frequency_mask(height: int, width: int, alpha: float) -> np.ndarray:
    """Return the IHM window M of Eq. 2 in the centred (``fftshift``) spectrum.

    The window is the square of half-width ``b = floor(alpha * min(H, W))`` around
    ``(H // 2, W // 2)``, rows and columns ``c - b .. c + b`` inclusive, clipped to
    the array (the convention of FDA, Yang & Soatto 2020).

    Parameters
    ----------
    height, width : int
        Image size.
    alpha : float
        Window size, in (0, 0.5]. At 0.5 the window covers the whole spectrum.

    Returns
    -------
    mask : np.ndarray
        Boolean ``(height, width)``, True inside the window.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    _check_strengths(alpha, 0.0)
    half = int(np.floor(alpha * min(height, width)))
    rows, cols = height // 2, width // 2
    mask = np.zeros((height, width), dtype=bool)
    mask[max(rows - half, 0) : rows + half + 1, max(cols - half, 0) : cols + half + 1] = True
    return mask


def mask_coverage(height: int, width: int, alpha: float) -> float:
    """Fraction of the spectrum's coefficients that the IHM window covers."""
    return float(low_frequency_mask(height, width, alpha).mean())


@lru_cache(maxsize=32)
def _half_spectrum_mask(height: int, width: int, alpha: float, device: torch.device) -> torch.Tensor:
    # Move the centred window to the unshifted layout of fft2, then keep the columns
    # rfft2 returns; the window is symmetric about the origin, so nothing is lost.
    unshifted = np.fft.ifftshift(low_frequency_mask(height, width, alpha))
    return torch.from_numpy(unshifted[:, : width // 2 + 1].astype(np.float32)).to(device)


def host_spectrum(host: torch.Tensor) -> HostSpectrum:
    """Compute the amplitude and phase of host image(s) once, for reuse by :func:`hide`.

    Parameters
    ----------
    host : torch.Tensor
        ``(C, H, W)`` or ``(N, C, H, W)``, float with values in [0, 1], any device.

    Returns
    -------
    HostSpectrum
        On the host's device.
    """
    _check_unit_images(host, "host", ranks=(3, 4))
    spectrum = torch.fft.rfft2(host.float())
    return HostSpectrum(spectrum.abs(), torch.polar(torch.ones_like(spectrum.real), spectrum.angle()), host.shape[-1])


def hide(
    plain: torch.Tensor,
    host: torch.Tensor | HostSpectrum,
    alpha: float = 0.5,
    beta: float = 0.5,
    plain_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hide plaintext images in host images by exchanging Fourier amplitude (Eq. 1-4).

    Parameters
    ----------
    plain : torch.Tensor
        ``(B, C, H, W)`` float with values in [0, 1]: the images to hide.
    host : torch.Tensor or HostSpectrum
        One host ``(C, H, W)`` for the whole batch or one per image ``(B, C, H, W)``,
        float in [0, 1]; or their precomputed :func:`host_spectrum`.
    alpha : float
        Size of the low-frequency window M, in (0, 0.5]. Default 0.5 (the paper's).
    beta : float
        Weight of the plaintext amplitude inside the window, in [0, 1]. 0 returns the
        host. Default 0.5 (the paper's).
    plain_gain : torch.Tensor, optional
        ``(B, C, H, W // 2 + 1)`` positive factors on the plaintext's half-spectrum
        amplitude before it is blended in: an amplitude perturbation
        (:func:`fesf_fed.amplitude.amplitude_gains`). None leaves Eq. 3 as published.

    Returns
    -------
    torch.Tensor
        float32, the shape of ``plain``, on its device, clamped to [0, 1].

    Raises
    ------
    TypeError, ValueError
        For a non-tensor or non-float input, a wrong rank, mismatched shapes, NaN,
        values outside [0, 1], or alpha/beta out of range.
    """
    _check_unit_images(plain, "plain", ranks=(4,))
    _check_strengths(alpha, beta)
    spectrum = host if isinstance(host, HostSpectrum) else host_spectrum(host)
    host_shape = spectrum.image_shape
    if host_shape[-3:] != tuple(plain.shape[1:]) or (len(host_shape) == 4 and host_shape[0] != plain.shape[0]):
        raise ValueError(
            f"host shape {host_shape} does not match plain shape {tuple(plain.shape)}: "
            "give one host (C, H, W) or one per image (B, C, H, W) of the same size and channels"
        )
    spectrum = spectrum.to(plain.device)
    height, width = plain.shape[-2:]
    if plain_gain is not None and tuple(plain_gain.shape) != (*plain.shape[:-1], width // 2 + 1):
        raise ValueError(
            f"plain_gain must have the half-spectrum shape {(*plain.shape[:-1], width // 2 + 1)}, "
            f"got {tuple(plain_gain.shape)}"
        )
    weight = beta * _half_spectrum_mask(height, width, float(alpha), plain.device)
    hidden = torch.empty(plain.shape, dtype=torch.float32, device=plain.device)
    # On a CPU, a few images at a time keep the spectra in cache: 2-3x faster than
    # one pass over a large batch. A GPU takes the batch whole.
    step = len(plain) if plain.is_cuda else max(1, _CPU_CHUNK_ELEMENTS // plain[0].numel())
    for start in range(0, len(plain), step):
        chunk = slice(start, start + step)
        host = spectrum[chunk] if len(host_shape) == 4 else spectrum
        amplitude = torch.fft.rfft2(plain[chunk].float()).abs()
        if plain_gain is not None:
            amplitude.mul_(plain_gain[chunk].to(amplitude.device))
        # Eq. 3 rearranged: A_host + beta * M * (A_plain - A_host), one fused pass.
        torch.lerp(host.amplitude, amplitude, weight, out=amplitude)
        torch.fft.irfft2(amplitude * host.phasor, s=(height, width), out=hidden[chunk])  # Eq. 4
    return hidden.clamp_(0.0, 1.0)


def hide_reference(plain: np.ndarray, host: np.ndarray, alpha: float = 0.5, beta: float = 0.5) -> np.ndarray:
    """Eq. 1-4 transcribed literally, one ``(C, H, W)`` image at a time, in NumPy.

    Slow on purpose: full complex spectra, ``fftshift`` and the host's FFT recomputed
    per call. It is the reference that :func:`hide` is tested and benchmarked against.
    """
    mask = low_frequency_mask(plain.shape[-2], plain.shape[-1], alpha)
    hidden = np.empty(plain.shape, dtype=np.float64)
    for channel in range(plain.shape[0]):
        spectrum_plain = np.fft.fftshift(np.fft.fft2(plain[channel]))  # Eq. 1
        spectrum_host = np.fft.fftshift(np.fft.fft2(host[channel]))
        amplitude_plain, amplitude_host = np.abs(spectrum_plain), np.abs(spectrum_host)
        phase_host = np.angle(spectrum_host)
        amplitude = ((1 - beta) * amplitude_host + beta * amplitude_plain) * mask + amplitude_host * (1 - mask)  # Eq. 3
        spectrum = np.fft.ifftshift(amplitude * np.exp(1j * phase_host))
        hidden[channel] = np.real(np.fft.ifft2(spectrum))  # Eq. 4
    return np.clip(hidden, 0.0, 1.0)
