"""The amplitude perturbation defence: keyed, repeatable per image, and applied the same in both IHM steps."""

import numpy as np
import pytest
import torch

from fesf_fed.amplitude import amplitude_gains
from fesf_fed.build import site_cache
from fesf_fed.config import PipelineConfig, load_config
from fesf_fed.data.phantom import phantom_dataset, phantom_hosts
from fesf_fed.ihm import hide, host_spectrum
from fesf_fed.iqem import IdentityGenerator
from fesf_fed.pipeline import SurrogatePipeline
from fesf_fed.pixels import to_unit_float

CPU = torch.device("cpu")


def _plain(count: int = 4) -> torch.Tensor:
    return to_unit_float(phantom_dataset(per_class=count // 2, size=16, seed=0).images, CPU)


def test_gains_are_keyed_and_the_same_for_the_same_image() -> None:
    plain = _plain()
    gains = amplitude_gains(plain, 1.0, b"site key")
    assert gains.shape == (4, 1, 16, 9) and bool((gains > 0).all())
    # Another call, or the same image in another batch, gets the same factors: re-converting a scan adds nothing.
    assert torch.equal(gains, amplitude_gains(plain, 1.0, b"site key"))
    assert torch.equal(gains[2:3], amplitude_gains(plain[2:3], 1.0, b"site key"))
    # Without the key they cannot be predicted; another image gets others.
    assert not torch.allclose(gains, amplitude_gains(plain, 1.0, b"another key"))
    assert not torch.allclose(gains[0], gains[1])
    assert float(gains.log().std()) == pytest.approx(1.0, abs=0.1)
    assert torch.equal(amplitude_gains(plain, 0.0, b"site key"), torch.ones_like(gains))


def test_bad_gain_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="noise must be at least 0"):
        amplitude_gains(_plain(), -1.0, b"key")
    with pytest.raises(ValueError, match="key must not be empty"):
        amplitude_gains(_plain(), 1.0, b"")
    with pytest.raises(ValueError, match="plain_gain must have the half-spectrum shape"):
        hide(_plain(), _plain(), plain_gain=torch.ones(4, 1, 16, 16))


def test_unit_gains_leave_ihm_unchanged_and_noise_changes_the_surrogate() -> None:
    plain, host = _plain(), to_unit_float(phantom_hosts(4, 16, seed=3), CPU)
    assert torch.equal(hide(plain, host, plain_gain=torch.ones(4, 1, 16, 9)), hide(plain, host))
    noisy = hide(plain, host, plain_gain=amplitude_gains(plain, 2.0, b"key"))
    assert float((noisy - hide(plain, host)).abs().mean()) > 0.01


def test_the_pipeline_perturbs_both_steps_and_needs_the_key() -> None:
    plain = _plain()
    spectra = host_spectrum(to_unit_float(phantom_hosts(2, 16, seed=3), CPU))
    config = PipelineConfig(alpha=0.5, beta=0.5, refine_alpha=0.5, refine_beta=0.1, amplitude_noise=1.5)
    with pytest.raises(ValueError, match="needs the site key"):
        SurrogatePipeline(spectra, IdentityGenerator(), config)
    hosts = np.array([0, 1, 0, 1])
    outputs = SurrogatePipeline(spectra, IdentityGenerator(), config, b"key")(plain, hosts)
    gains = amplitude_gains(plain, 1.5, b"key")
    x_sy = hide(plain, spectra[hosts], beta=0.5, plain_gain=gains)
    assert torch.allclose(outputs["x_sy"], x_sy)
    assert torch.allclose(outputs["x_su_prime"], hide(plain, x_sy, beta=0.1, plain_gain=gains))


def test_the_noise_is_part_of_the_cache_key() -> None:
    plain, noisy = load_config(None), load_config(None, command_line={"pipeline.amplitude_noise": 1.0})
    assert site_cache(plain).directory != site_cache(noisy).directory
