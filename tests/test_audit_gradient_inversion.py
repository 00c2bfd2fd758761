"""Gradient inversion recovers an image from its gradient, and only from its own, undefended gradient.

A tiny untrained ``smallcnn`` (16 px, grey) and a bright rectangle on a dark background:
from a batch-of-one gradient the attack must come back with that rectangle, much closer to
it than noise or a flat image of its mean; from another image's gradient, or from the true
gradient drowned in Gaussian noise, it must not.
"""

import numpy as np
import pytest
import torch

from fesf_fed.audit.gradient_inversion import (
    infer_labels,
    invert_gradients,
    site_gradient,
    total_variation,
)
from fesf_fed.audit.similarity import ssim_per_image
from fesf_fed.models import build_model

SIZE = 16
CLASSES = 4
LABEL = torch.tensor([2])
ITERATIONS = 300


def _rectangle(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    image = torch.full((1, 1, SIZE, SIZE), 0.1)
    image[..., top:bottom, left:right] = 0.9
    return image


TRUE = _rectangle(4, 12, 4, 10)
OTHER = _rectangle(1, 5, 0, SIZE)  # a bar across the top: no overlap with the rectangle


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("smallcnn", CLASSES, in_channels=1)


def _mse(reference: torch.Tensor, test: torch.Tensor) -> float:
    return float(((reference - test) ** 2).mean())


def _ssim(reference: torch.Tensor, test: torch.Tensor) -> float:
    return float(ssim_per_image(reference.numpy(), test.numpy())[0])


def test_the_image_is_recovered_from_its_gradient(model: torch.nn.Module) -> None:
    gradient = site_gradient(model, TRUE, LABEL)
    # Two restarts: a single one lands in a poor local optimum for some weight draws.
    recovered = invert_gradients(model, gradient, LABEL, TRUE.shape, iterations=ITERATIONS, restarts=2)
    assert recovered.shape == TRUE.shape and not recovered.requires_grad
    assert 0 <= recovered.min() and recovered.max() <= 1
    noise = torch.rand(TRUE.shape, generator=torch.Generator().manual_seed(1))
    flat = torch.full_like(TRUE, float(TRUE.mean()))
    baseline_ssim = max(_ssim(TRUE, noise), _ssim(TRUE, flat))
    assert _ssim(TRUE, recovered) > 0.5 and _ssim(TRUE, recovered) > baseline_ssim + 0.4
    # A flat image at the true mean is the best guess without the gradient; the attack must halve its error.
    assert _mse(TRUE, recovered) < 0.5 * _mse(TRUE, flat)


def test_another_images_gradient_gives_that_image_not_this_one(model: torch.nn.Module) -> None:
    gradient = site_gradient(model, OTHER, LABEL)
    recovered = invert_gradients(model, gradient, LABEL, TRUE.shape, iterations=ITERATIONS)
    assert _ssim(TRUE, recovered) < 0.2
    assert _mse(TRUE, recovered) > _mse(TRUE, torch.full_like(TRUE, float(TRUE.mean())))
    assert _ssim(OTHER, recovered) > 0.4  # the attack follows the gradient it is given


def test_large_gradient_noise_defeats_the_attack(model: torch.nn.Module) -> None:
    gradient = site_gradient(model, TRUE, LABEL)
    # Per-coordinate noise ten times the whole gradient's norm. At once the norm, the noise along any one
    # direction is only as large as the signal, and in trials some structure still came through.
    norm = torch.cat([part.flatten() for part in gradient]).norm()
    generator = torch.Generator().manual_seed(2)
    noisy = [part + 10 * norm * torch.randn(part.shape, generator=generator) for part in gradient]
    recovered = invert_gradients(model, noisy, LABEL, TRUE.shape, iterations=ITERATIONS)
    assert _ssim(TRUE, recovered) < 0.2


def test_inversion_leaves_the_model_alone(model: torch.nn.Module) -> None:
    before = [parameter.detach().clone() for parameter in model.parameters()]
    gradient = site_gradient(model, TRUE, LABEL)
    invert_gradients(model, gradient, LABEL, TRUE.shape, iterations=3, restarts=2)
    for parameter, original in zip(model.parameters(), before):
        assert parameter.grad is None
        assert torch.equal(parameter, original)


def test_restarts_are_seeded_and_the_best_one_is_kept(model: torch.nn.Module) -> None:
    gradient = site_gradient(model, TRUE, LABEL)
    flat = torch.cat([part.flatten() for part in gradient])

    def objective(images: torch.Tensor) -> float:
        theirs = torch.cat([part.flatten() for part in site_gradient(model, images, LABEL)])
        cosine = torch.nn.functional.cosine_similarity(theirs, flat, dim=0)
        return float(1 - cosine + 0.05 * total_variation(images))

    first, second = (invert_gradients(model, gradient, LABEL, TRUE.shape, iterations=5, seed=seed) for seed in (3, 4))
    assert torch.equal(first, invert_gradients(model, gradient, LABEL, TRUE.shape, iterations=5, seed=3))
    assert not torch.equal(first, second)
    best = invert_gradients(model, gradient, LABEL, TRUE.shape, iterations=5, restarts=2, seed=3)
    assert torch.equal(best, first if objective(first) < objective(second) else second)


@pytest.mark.parametrize("label", range(CLASSES))
def test_a_single_label_is_read_off_the_gradient(model: torch.nn.Module, label: int) -> None:
    gradient = site_gradient(model, TRUE, torch.tensor([label]))
    assert infer_labels(gradient, CLASSES, 1).tolist() == [label]
    # Without the bias, the weight rows carry the same sign (the head's inputs follow a ReLU).
    assert infer_labels(gradient[:-1], CLASSES, 1).tolist() == [label]


def test_total_variation_is_zero_for_a_flat_image_and_grows_with_edges() -> None:
    assert float(total_variation(torch.full((1, 1, 8, 8), 0.3))) == 0
    assert float(total_variation(TRUE)) > 0
    assert float(total_variation(TRUE)) < float(total_variation(torch.rand(1, 1, SIZE, SIZE)))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"iterations": 0}, "iterations"),
        ({"restarts": 0}, "restarts"),
        ({"lr": 0.0}, "lr"),
        ({"tv_weight": -1.0}, "tv_weight"),
    ],
)
def test_invert_gradients_refuses_bad_settings(
    model: torch.nn.Module, settings: dict[str, float], message: str
) -> None:
    gradient = site_gradient(model, TRUE, LABEL)
    with pytest.raises(ValueError, match=message):
        invert_gradients(model, gradient, LABEL, TRUE.shape, **settings)  # type: ignore[arg-type]


def test_invert_gradients_refuses_bad_inputs(model: torch.nn.Module) -> None:
    gradient = site_gradient(model, TRUE, LABEL)
    for shape in [(1, SIZE, SIZE), (1, 0, SIZE, SIZE)]:
        with pytest.raises(ValueError, match="four positive sizes"):
            invert_gradients(model, gradient, LABEL, shape)
    for labels in [torch.tensor([1, 2]), torch.tensor([1.0])]:
        with pytest.raises(ValueError, match="labels"):
            invert_gradients(model, gradient, labels, TRUE.shape)
    with pytest.raises(ValueError, match="do not match"):
        invert_gradients(model, gradient[:-1], LABEL, TRUE.shape)
    with pytest.raises(ValueError, match="non-finite"):
        invert_gradients(model, [torch.full_like(gradient[0], float("nan")), *gradient[1:]], LABEL, TRUE.shape)


def test_site_gradient_and_infer_labels_refuse_bad_arguments(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="float"):
        site_gradient(model, (TRUE * 255).to(torch.uint8), LABEL)
    with pytest.raises(ValueError, match="labels"):
        site_gradient(model, TRUE, torch.tensor([1, 2]))
    gradient = site_gradient(model, TRUE, LABEL)
    with pytest.raises(ValueError, match="batch_size"):
        infer_labels(gradient, CLASSES, CLASSES + 1)
    with pytest.raises(ValueError, match="head"):
        infer_labels(gradient[:1], CLASSES, 1)


def test_recovered_images_compare_with_ssim_per_image() -> None:
    images = np.random.default_rng(0).random((2, 3, 8, 8))
    assert ssim_per_image(images, images) == pytest.approx([1.0, 1.0])
    assert (ssim_per_image(images, images[::-1]) < 0.5).all()
    with pytest.raises(ValueError, match="7 x 7"):
        ssim_per_image(images[..., :6, :6], images[..., :6, :6])
