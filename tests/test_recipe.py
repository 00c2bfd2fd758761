"""The training recipe: class weighting finds the rare class, the schedule spans the run, augmentation is tame."""

from itertools import pairwise

import numpy as np
import pytest
import torch

from fesf_fed.errors import ConfigError
from fesf_fed.federation.settings import parse_run_settings
from fesf_fed.models import build_model
from fesf_fed.recipe import Recipe, augment_batch, class_weights
from fesf_fed.task import evaluate, train
from tests.simulation import run_config

CPU = torch.device("cpu")


def _toy(counts: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8 px noise images; class 1's top half is brighter by one noise SD (separable, if seen)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(2), counts)
    images = rng.normal(100, 40, (len(labels), 1, 8, 8))
    images[:, :, :4] += 40 * labels[:, None, None, None]
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_balanced_class_weights_are_n_over_k_n_c_and_zero_for_absent_classes() -> None:
    weights = class_weights(np.array([0] * 6 + [2] * 2), 3)
    torch.testing.assert_close(weights, torch.tensor([8 / (2 * 6), 0.0, 8 / (2 * 2)]))


def test_balanced_class_weighting_finds_the_rare_class_that_plain_cross_entropy_misses() -> None:
    train_set, test_set = _toy((90, 10), seed=0), _toy((100, 100), seed=1)
    minority, majority = {}, {}
    for weighting in ("none", "balanced"):
        recalls = []
        for seed in range(3):  # one seed's recall swings (0.04 to 0.93); their mean does not (0.45 vs 0.85)
            torch.manual_seed(seed)
            model = build_model("smallcnn", 2, 1)
            recipe = Recipe(class_weighting=weighting, augment="none")
            train(model, *train_set, epochs=6, lr=3e-3, batch_size=10, device=CPU, seed=seed, recipe=recipe)
            confusion = np.array(evaluate(model, *test_set, num_classes=2, batch_size=200, device=CPU).confusion)
            recalls.append(confusion.diagonal() / confusion.sum(axis=1))
        majority[weighting], minority[weighting] = np.mean(recalls, axis=0)
    assert minority["balanced"] > minority["none"] + 0.2, minority
    assert majority["balanced"] > 0.9, majority  # found by telling the classes apart, not by answering class 1


def test_the_learning_rate_warms_up_then_decays_along_the_whole_run_across_calls() -> None:
    images, labels = _toy((4, 4), seed=0)  # batches of 4: two steps an epoch
    recipe = Recipe(augment="none", warmup_fraction=0.25)
    model = build_model("smallcnn", 2, 1)

    def rates(recipe: Recipe, epochs: int, first_epoch: int = 0, total_epochs: int | None = None) -> list[float]:
        trace: list[float] = []
        train(model, images, labels, epochs=epochs, lr=0.1, batch_size=4, device=CPU, recipe=recipe,
              first_epoch=first_epoch, total_epochs=total_epochs, lr_trace=trace)  # fmt: skip
        return trace

    whole = rates(recipe, 8)
    # Four "rounds" of two local epochs each follow the one schedule of the 8-epoch run.
    assert [rate for first in range(0, 8, 2) for rate in rates(recipe, 2, first, 8)] == whole and len(whole) == 16
    # Warm-up over the first 2 epochs (4 steps, rates at each step's middle), then cosine decay to about 0.
    assert whole[:4] == pytest.approx([0.0125, 0.0375, 0.0625, 0.0875])
    decay = whole[4:]
    assert all(later < earlier for earlier, later in pairwise(decay))
    assert 0.099 < decay[0] < 0.1 and 0 < decay[-1] < 0.001
    assert whole == [recipe.learning_rate(0.1, step / 2 + 0.25, 8) for step in range(16)]
    assert rates(Recipe(lr_schedule="constant"), 1, 3, 8) == [0.1, 0.1]
    with pytest.raises(ValueError, match="do not lie in a run of total_epochs 8"):
        train(model, images, labels, epochs=2, lr=0.1, batch_size=4, device=CPU, first_epoch=7, total_epochs=8)


def test_a_federated_round_knows_its_place_in_the_run() -> None:
    settings, _ = parse_run_settings(run_config(**{"num-server-rounds": 20, "local-epochs": 5}))
    assert [settings.epoch_position(r) for r in (1, 3, 20)] == [(0, 100), (10, 100), (95, 100)]


def test_light_augmentation_keeps_shape_dtype_and_range_and_none_is_the_identity() -> None:
    images = torch.rand(6, 3, 28, 28)
    assert augment_batch(images, "none", torch.Generator().manual_seed(0)) is images
    augmented = augment_batch(images, "light", torch.Generator().manual_seed(0))
    again = augment_batch(images, "light", torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and augmented.dtype == images.dtype and augmented.device == images.device
    assert 0 <= augmented.min() and augmented.max() <= 1 and not torch.equal(augmented, images)
    torch.testing.assert_close(augmented, again)
    # Reflected borders: a flat image stays flat (no black corners to learn).
    flat = torch.full((4, 1, 16, 16), 0.7)
    torch.testing.assert_close(augment_batch(flat, "light", torch.Generator().manual_seed(1)), flat)


def test_flip_augmentation_mirrors_some_images_exactly_and_changes_no_pixel_value() -> None:
    # Exact: no resampling, so no frequency of a surrogate's hidden amplitude is blurred.
    images = torch.rand(32, 1, 8, 8)
    flipped = augment_batch(images, "flip", torch.Generator().manual_seed(0))
    mirrored = [bool(torch.equal(out, image.flip(-1))) for out, image in zip(flipped, images)]
    kept = [bool(torch.equal(out, image)) for out, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < len(images)
    torch.testing.assert_close(flipped, augment_batch(images, "flip", torch.Generator().manual_seed(0)))


def test_the_run_settings_build_the_recipe_and_refuse_bad_values_in_one_line() -> None:
    assert parse_run_settings(run_config())[0].recipe() == Recipe()
    legacy = {
        "class-weighting": "none",
        "augment": "none",
        "optimiser": "adam",
        "weight-decay": 0.0,
        "lr-schedule": "constant",
        "warmup-fraction": 0.0,
        "clip-grad-norm": 0,
    }
    assert parse_run_settings(run_config(**legacy))[0].recipe() == Recipe.legacy()
    for key, value, message in [
        ("class-weighting", "inverse", "class-weighting: Input should be 'balanced' or 'none'"),
        ("augment", "heavy", "augment: Input should be 'flip', 'light' or 'none'"),
        ("optimiser", "sgd", "optimiser: Input should be 'adamw' or 'adam'"),
        ("lr-schedule", "step", "lr-schedule: Input should be 'cosine' or 'constant'"),
        ("weight-decay", -0.1, "weight-decay: Input should be greater than or equal to 0"),
        ("warmup-fraction", 1.0, "warmup-fraction: Input should be less than 1"),
        ("clip-grad-norm", -1, "clip-grad-norm: Input should be greater than or equal to 0"),
    ]:
        with pytest.raises(ConfigError, match=message) as raised:
            parse_run_settings(run_config(**{key: value}))
        assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="recipe augment: choose one of flip, light, none"):
        Recipe(augment="heavy")  # type: ignore[arg-type]
