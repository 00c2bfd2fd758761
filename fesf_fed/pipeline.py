"""The FESF surrogate pipeline: x_pl --IHM--> x_sy --G--> x_su --IHM--> x_su' (docs/design.md section 2)."""

import numpy as np
import torch

from fesf_fed.amplitude import amplitude_gains
from fesf_fed.config import PipelineConfig
from fesf_fed.ihm import HostSpectrum, hide


class SurrogatePipeline:
    """Turn plaintext batches into all three surrogate stages on one device.

    Parameters
    ----------
    hosts : HostSpectrum
        Spectra of the whole host bank ``(N, C, H, W)``, computed once.
    generator : torch.nn.Module
        The trained IQEM generator G (eval mode), on the hosts' device: ``G(x_sy, host)``
        (:class:`~fesf_fed.iqem.Generator`, or :class:`~fesf_fed.iqem.IdentityGenerator` when off).
    config : PipelineConfig
        IHM strengths of the first (alpha, beta) and the refining (alpha', beta') step,
        and the amplitude perturbation.
    key : bytes, optional
        The site's secret key, which seeds the amplitude perturbation; required when
        ``config.amplitude_noise`` is above 0.
    """

    def __init__(
        self, hosts: HostSpectrum, generator: torch.nn.Module, config: PipelineConfig, key: bytes = b""
    ) -> None:
        if hosts.amplitude.ndim != 4:
            raise ValueError("hosts must be the spectra of a host bank (N, C, H, W)")
        if config.amplitude_noise and not key:
            raise ValueError("pipeline.amplitude_noise needs the site key")
        self.hosts = hosts
        self.generator = generator
        self.config = config
        self.key = key

    @property
    def device(self) -> torch.device:
        """The device every step runs on."""
        return self.hosts.amplitude.device

    def _gains(self, plain: torch.Tensor) -> torch.Tensor | None:
        """The amplitude perturbation of each plaintext, the same in both IHM steps (None when off)."""
        if not self.config.amplitude_noise:
            return None
        return amplitude_gains(plain, self.config.amplitude_noise, self.key)

    def hide(self, plain: torch.Tensor, host_index: np.ndarray, gains: torch.Tensor | None = None) -> torch.Tensor:
        """First IHM step: x_sy of each plaintext image, in its assigned host.

        ``gains``: the plaintexts' amplitude perturbation, when the caller has it already.
        """
        if gains is None:
            gains = self._gains(plain)
        return hide(plain, self.hosts[host_index], self.config.alpha, self.config.beta, gains)

    @torch.no_grad()
    def __call__(self, plain: torch.Tensor, host_index: np.ndarray) -> dict[str, torch.Tensor]:
        """Run all three steps on a batch.

        Parameters
        ----------
        plain : torch.Tensor
            ``(B, C, H, W)`` float in [0, 1] on the pipeline's device.
        host_index : np.ndarray
            ``(B,)`` the host bank index assigned to each image.

        Returns
        -------
        dict of str to torch.Tensor
            ``"x_sy"``, ``"x_su"`` and ``"x_su_prime"``, each float32 like ``plain``.
        """
        # One draw for both steps: independent draws would average out in x_su'.
        gains = self._gains(plain)
        x_sy = self.hide(plain, host_index, gains)
        x_su = self.generator(x_sy, self.hosts[host_index].images().clamp(0.0, 1.0))
        # Refinement: x_su is the host (its phase and base amplitude), the plaintext
        # is injected again at low intensity (docs/design.md: the reading under which the
        # paper's accuracy rises from x_su to x_su').
        x_su_prime = hide(plain, x_su, self.config.refine_alpha, self.config.refine_beta, gains)
        return {"x_sy": x_sy, "x_su": x_su, "x_su_prime": x_su_prime}
