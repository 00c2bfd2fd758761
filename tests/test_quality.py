"""Tables 2/3 figures: SSIM and PSNR from scikit-image, LPIPS only from local weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from fesf_fed.errors import ConfigError
from fesf_fed.quality import QUALITY_PAIRS, load_lpips, measure_quality


def _images(channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((3, channels, 24, 24), dtype=np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_score_perfectly_and_different_ones_do_not(channels: int) -> None:
    plain, host = _images(channels, 0), _images(channels, 1)
    pairs = measure_quality(
        {"x_pl": plain, "host": host, "x_sy": plain.copy(), "x_su": host.copy(), "x_su_prime": host.copy()}
    )
    figures = {pair.pair: pair for pair in pairs}
    assert [pair.pair for pair in pairs] == [name for name, _, _ in QUALITY_PAIRS]
    assert figures["x_pl vs x_sy"].ssim_mean == pytest.approx(1.0) and figures["x_pl vs x_sy"].psnr_mean == 100.0
    assert figures["host vs x_su'"].ssim_mean == pytest.approx(1.0)
    assert figures["host vs x_su"].ssim_mean == pytest.approx(1.0) and figures["x_pl vs x_su"].ssim_mean < 0.2
    assert figures["x_pl vs x_su'"].ssim_mean < 0.2 and figures["x_pl vs x_su'"].psnr_mean < 15
    assert all(pair.lpips_mean is None for pair in pairs)


def test_psnr_matches_its_definition() -> None:
    plain = np.full((1, 1, 16, 16), 0.5, dtype=np.float32)
    noisy = plain + 0.1  # MSE 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB
    pairs = measure_quality({"x_pl": plain, "host": plain, "x_sy": noisy, "x_su": noisy, "x_su_prime": noisy})
    assert pairs[3].psnr_mean == pytest.approx(20.0, abs=1e-3)


def test_missing_or_mismatched_images_are_refused() -> None:
    plain = _images(1, 0)
    with pytest.raises(ValueError, match="images must hold"):
        measure_quality({"x_pl": plain, "host": plain, "x_sy": plain})
    with pytest.raises(ValueError, match="one shape"):
        measure_quality({"x_pl": plain, "host": plain, "x_sy": plain, "x_su": plain, "x_su_prime": plain[:2]})


def test_lpips_is_unavailable_without_local_weights() -> None:
    model, reason = load_lpips(None)
    assert model is None and "no local AlexNet weights" in reason and "downloaded" in reason


def test_lpips_is_computed_from_a_local_alexnet_file(tmp_path: Path) -> None:
    weights = tmp_path / "alexnet.pth"
    torch.manual_seed(0)
    # The convolutional part is all LPIPS reads (the classifier would add 230 MB).
    backbone = {
        k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features.")
    }
    torch.save(backbone, weights)
    model, reason = load_lpips(weights)
    assert model is not None and reason == ""
    plain, other = _images(1, 0), _images(1, 1)
    plain, other = np.repeat(np.repeat(plain, 3, 2), 3, 3), np.repeat(np.repeat(other, 3, 2), 3, 3)  # 72 px
    images = {"x_pl": plain, "host": other, "x_sy": plain.copy(), "x_su": other.copy(), "x_su_prime": other.copy()}
    pairs = measure_quality(images, model)
    figures = {pair.pair: pair for pair in pairs}
    assert figures["x_pl vs x_sy"].lpips_mean == pytest.approx(0.0, abs=1e-6)
    lpips_su_prime = figures["x_pl vs x_su'"].lpips_mean
    assert lpips_su_prime is not None and lpips_su_prime > 0


def test_a_bad_lpips_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="quality.lpips_weights: .* not found"):
        load_lpips(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="not a torchvision AlexNet state dict"):
        load_lpips(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_lpips(garbage)
