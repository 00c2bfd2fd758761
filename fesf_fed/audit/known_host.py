"""Known host: with the site key leaked, recover the plaintext's amplitude, then its phase.

The key names each image's host (:func:`fesf_fed.hosts.assign_hosts`) and, for a phantom
bank, seeds the bank itself, so a stolen key (or a stolen site disk) gives the attacker
every surrogate's host amplitude ``A_h``. Taking G as close to the identity (IQEM keeps
x_su near x_sy), Eq. 3 applied twice gives, inside both IHM windows,

    A_su' = (1 - beta') (1 - beta) A_h + ((1 - beta') beta + beta') A_pl,

so ``A_pl`` follows by subtraction wherever its coefficient is above 0. Where neither
window reaches, the surrogate holds no plaintext amplitude; the attacker's public mean
amplitude fills in. The phase is then guessed by Fienup's hybrid input-output algorithm
followed by error reduction ("Phase retrieval algorithms: a comparison", Applied Optics
1982): real images in [0, 1] inside a support, with the recovered amplitude. A phase
retrieval answer is only defined up to its twin (the image turned by 180 degrees), so
the better-scoring of the two is kept: a bound in the attacker's favour.
"""

import numpy as np
import torch

from fesf_fed.config import PipelineConfig
from fesf_fed.ihm import low_frequency_mask

__all__ = ["phase_retrieval", "recover_amplitude", "twin"]

#: HIO's feedback constant (Fienup's usual 0.9).
_FEEDBACK = 0.9


def _half_window(height: int, width: int, alpha: float) -> np.ndarray:
    return np.fft.ifftshift(low_frequency_mask(height, width, alpha))[:, : width // 2 + 1]


def recover_amplitude(
    surrogates: np.ndarray, hosts: np.ndarray, config: PipelineConfig, prior: np.ndarray
) -> np.ndarray:
    """The plaintexts' half-spectrum amplitude, from their x_su' and their (leaked) hosts.

    Parameters
    ----------
    surrogates, hosts : np.ndarray
        uint8 ``(N, C, H, W)``: each x_su' and the host it was hidden in.
    config : PipelineConfig
        The IHM strengths the surrogates were made with.
    prior : np.ndarray
        ``(C, H, W // 2 + 1)`` amplitude used where the windows carry no plaintext, e.g.
        the mean amplitude of public images.

    Returns
    -------
    np.ndarray
        float64 ``(N, C, H, W // 2 + 1)``, at least 0.
    """
    if surrogates.shape != hosts.shape or surrogates.ndim != 4:
        raise ValueError(
            f"surrogates and hosts must be matching (N, C, H, W), got {surrogates.shape} and {hosts.shape}"
        )
    height, width = surrogates.shape[2:]
    hide = _half_window(height, width, config.alpha) * config.beta
    refine = _half_window(height, width, config.refine_alpha) * config.refine_beta
    host_weight = (1 - refine) * (1 - hide)
    plain_weight = (1 - refine) * hide + refine
    amplitude_su = np.abs(np.fft.rfft2(surrogates / 255.0))
    amplitude_host = np.abs(np.fft.rfft2(hosts / 255.0))
    known = plain_weight > 1e-6
    recovered = (amplitude_su - host_weight * amplitude_host) / np.where(known, plain_weight, 1.0)
    return np.clip(np.where(known, recovered, prior), 0.0, None)


def twin(images: np.ndarray) -> np.ndarray:
    """Each image's phase-retrieval twin ``x(-n)``: turned by 180 degrees on the periodic grid."""
    return np.roll(images[..., ::-1, ::-1], shift=(1, 1), axis=(-2, -1))


def phase_retrieval(
    amplitude: np.ndarray, support: np.ndarray, *, iterations: int, width: int, seed: int = 0
) -> np.ndarray:
    """Images with the given Fourier amplitude, real, in [0, 1] and zero outside ``support``.

    Parameters
    ----------
    amplitude : np.ndarray
        ``(N, C, H, W // 2 + 1)`` half-spectrum amplitudes.
    support : np.ndarray
        Boolean ``(N, C, H, W)`` or ``(C, H, W)``: where the images may be non-zero.
    iterations : int
        Iterations in all: 80 % hybrid input-output, then error reduction.
    width : int
        The image width W (a half spectrum does not fix it).
    seed : int
        Seeds the random starting images.

    Returns
    -------
    np.ndarray
        float32 ``(N, C, H, W)`` in [0, 1].
    """
    if amplitude.ndim != 4 or amplitude.shape[-1] != width // 2 + 1:
        raise ValueError(f"amplitude must be (N, C, H, W // 2 + 1) for width {width}, got {amplitude.shape}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    size = (amplitude.shape[2], width)
    target = torch.as_tensor(amplitude, dtype=torch.float32)
    inside = torch.as_tensor(np.broadcast_to(support, (*amplitude.shape[:2], *size)).copy())
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((*amplitude.shape[:2], *size), generator=generator) * inside
    hio_steps = int(0.8 * iterations)
    for step in range(iterations):
        spectrum = torch.fft.rfft2(image)
        # Keep the phase, impose the amplitude.
        spectrum = target * torch.exp(1j * spectrum.angle())
        projected = torch.fft.irfft2(spectrum, s=size)
        valid = inside & (projected >= 0) & (projected <= 1)
        if step < hio_steps:
            image = torch.where(valid, projected, image - _FEEDBACK * projected)
        else:
            image = torch.where(valid, projected, projected.clamp(0, 1) * inside)
    return image.clamp(0, 1).numpy()
