"""IHM (Eq. 1-4): the fast batched path against the literal equations, and its guards."""

import numpy as np
import pytest
import torch

from fesf_fed.ihm import hide, hide_reference, host_spectrum, low_frequency_mask, mask_coverage


def _images(*shape: int, seed: int = 0, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=generator)


@pytest.mark.parametrize("height,width", [(16, 16), (31, 20), (17, 33)])
@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.1, 0.3), (0.02, 1.0)])
def test_hide_matches_the_literal_equations(height: int, width: int, alpha: float, beta: float) -> None:
    plain, host = _images(3, 2, height, width, seed=1), _images(2, height, width, seed=2)
    expected = np.stack([hide_reference(p.double().numpy(), host.double().numpy(), alpha, beta) for p in plain])
    np.testing.assert_allclose(hide(plain, host, alpha, beta).numpy(), expected, atol=1e-5)


def test_beta_zero_returns_the_host() -> None:
    plain, host = _images(2, 1, 24, 24, seed=1), _images(1, 24, 24, seed=2)
    np.testing.assert_allclose(hide(plain, host, 0.5, 0.0).numpy(), host.expand(2, -1, -1, -1).numpy(), atol=1e-5)


def test_small_alpha_changes_only_the_window() -> None:
    # Mid-grey images with small variations, so that clamping never acts.
    plain, host = _images(1, 1, 32, 32, seed=3, low=0.45, high=0.55), _images(1, 32, 32, seed=4, low=0.4, high=0.6)
    alpha, beta = 0.1, 0.5
    hidden = hide(plain, host, alpha, beta)
    assert 0 < hidden.min() and hidden.max() < 1

    def centred_spectrum(image: torch.Tensor) -> np.ndarray:
        return np.fft.fftshift(np.fft.fft2(image.reshape(32, 32).double().numpy()))

    window = low_frequency_mask(32, 32, alpha)
    out, h, p = centred_spectrum(hidden), centred_spectrum(host), centred_spectrum(plain)
    np.testing.assert_allclose(np.abs(out)[~window], np.abs(h)[~window], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        np.abs(out)[window], ((1 - beta) * np.abs(h) + beta * np.abs(p))[window], rtol=1e-3, atol=1e-3
    )
    # The phase is the host's everywhere (Eq. 4): where the amplitude is not tiny.
    significant = np.abs(h) > 1e-3
    phase_error = np.angle(out * np.conj(h))[significant]
    assert np.abs(phase_error).max() < 1e-3


def test_batched_equals_one_by_one_and_spectrum_reuse() -> None:
    plain, hosts = _images(5, 3, 20, 28, seed=5), _images(5, 3, 20, 28, seed=6)
    batched = hide(plain, hosts, 0.3, 0.4)
    singles = torch.cat([hide(plain[i : i + 1], hosts[i], 0.3, 0.4) for i in range(5)])
    torch.testing.assert_close(batched, singles)
    bank = host_spectrum(hosts)
    torch.testing.assert_close(hide(plain, bank[torch.arange(5)], 0.3, 0.4), batched)
    torch.testing.assert_close(hide(plain[2:3], bank[2], 0.3, 0.4), singles[2:3])


def test_a_batch_processed_in_chunks_matches_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a CPU, hide() works a few images at a time; make the chunks small to cross their borders.
    monkeypatch.setattr("fesf_fed.ihm._CPU_CHUNK_ELEMENTS", 2 * 3 * 16 * 16)
    plain, hosts = _images(5, 3, 16, 16, seed=9), _images(5, 3, 16, 16, seed=10)
    expected = np.stack(
        [hide_reference(p.double().numpy(), h.double().numpy(), 0.5, 0.5) for p, h in zip(plain, hosts)]
    )
    np.testing.assert_allclose(hide(plain, host_spectrum(hosts)[torch.arange(5)]).numpy(), expected, atol=1e-5)


def test_output_shape_dtype_and_device_follow_the_plaintext() -> None:
    plain, host = _images(2, 1, 9, 12).double(), _images(1, 9, 12).double()
    hidden = hide(plain, host)
    assert hidden.shape == plain.shape and hidden.dtype == torch.float32 and hidden.device == plain.device
    assert 0 <= hidden.min() and hidden.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    plain, host = _images(4, 3, 64, 64, seed=7), _images(3, 64, 64, seed=8)
    on_gpu = hide(plain.cuda(), host_spectrum(host.cuda()))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), hide(plain, host), atol=1e-5, rtol=1e-5)


def test_mask_follows_the_fda_convention() -> None:
    mask = low_frequency_mask(10, 8, 0.1)  # b = floor(0.1 * 8) = 0: the centre coefficient only
    assert mask.sum() == 1 and mask[5, 4]
    mask = low_frequency_mask(10, 8, 0.25)  # b = 2: rows 3..7, columns 2..6
    assert mask.sum() == 25 and mask[3:8, 2:7].all()
    assert mask_coverage(64, 64, 0.5) == 1.0
    # Non-square images: the window spans the short side only (b = floor(alpha * min(H, W))).
    assert mask_coverage(40, 64, 0.5) == pytest.approx(41 / 64)
    assert mask_coverage(31, 20, 0.5) == pytest.approx(21 / 31)


@pytest.mark.parametrize(
    "plain,host,alpha,beta,message",
    [
        (_images(1, 8, 8), _images(1, 8, 8), 0.5, 0.5, r"plain must have shape \(B, C, H, W\)"),
        (_images(1, 1, 8, 8), _images(8, 8), 0.5, 0.5, r"host must have shape"),
        (_images(1, 1, 8, 8), _images(1, 8, 9), 0.5, 0.5, "does not match"),
        (_images(2, 1, 8, 8), _images(3, 1, 8, 8), 0.5, 0.5, "does not match"),
        (_images(1, 1, 8, 8), _images(3, 8, 8), 0.5, 0.5, "does not match"),
        (_images(1, 1, 8, 8), _images(1, 8, 8), 0.0, 0.5, r"alpha must be in \(0, 0.5\]"),
        (_images(1, 1, 8, 8), _images(1, 8, 8), 0.6, 0.5, r"alpha must be in \(0, 0.5\]"),
        (_images(1, 1, 8, 8), _images(1, 8, 8), 0.5, -0.1, r"beta must be in \[0, 1\]"),
        (_images(1, 1, 8, 8), _images(1, 8, 8), 0.5, 1.5, r"beta must be in \[0, 1\]"),
        (_images(1, 1, 8, 8) * 2, _images(1, 8, 8), 0.5, 0.5, r"plain has values in .* scale images to \[0, 1\]"),
        (_images(1, 1, 8, 8), _images(1, 8, 8) - 1, 0.5, 0.5, r"host has values in"),
        (torch.full((1, 1, 8, 8), float("nan")), _images(1, 8, 8), 0.5, 0.5, "plain contains NaN"),
    ],
)
def test_invalid_arguments_are_refused_up_front(plain, host, alpha, beta, message) -> None:
    with pytest.raises(ValueError, match=message):
        hide(plain, host, alpha, beta)


def test_non_float_and_non_tensor_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="plain must be a float tensor"):
        hide(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), _images(1, 8, 8))
    with pytest.raises(TypeError, match="host must be a torch.Tensor"):
        hide(_images(1, 1, 8, 8), np.zeros((1, 8, 8)))  # type: ignore[arg-type]  # the wrong type on purpose
