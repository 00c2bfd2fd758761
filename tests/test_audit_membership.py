"""Membership inference finds an overfitted model's training images, and nothing where there is nothing to find.

Members are 32 tiny noise images with random labels: a model can only fit them by
memorising, so after enough epochs their loss is near zero while an unseen image's is not.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fesf_fed.audit.membership import loss_threshold_auc, per_example_losses, shadow_attack_auc
from fesf_fed.models import build_model
from fesf_fed.recipe import Recipe
from fesf_fed.task import evaluate, train

CLASSES = 4
SIZE = 16
CPU = torch.device("cpu")

LabelledImages = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class World:
    """A target and a shadow model, each overfitted on its own members, and unseen images for each."""

    target: torch.nn.Module
    target_in: LabelledImages
    target_out: LabelledImages
    shadow: torch.nn.Module
    shadow_in: LabelledImages
    shadow_out: LabelledImages


def _noise_set(rng: np.random.Generator, count: int = 32) -> LabelledImages:
    return rng.integers(0, 256, (count, 1, SIZE, SIZE), dtype=np.uint8), rng.integers(0, CLASSES, count)


def _overfitted(members: LabelledImages, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("smallcnn", CLASSES, in_channels=1)
    # Legacy recipe: plain Adam on plain cross-entropy, no augmentation, the easiest to memorise with.
    train(model, *members, epochs=60, lr=0.01, batch_size=8, device=CPU, seed=seed, recipe=Recipe.legacy())
    return model


@pytest.fixture(scope="module")
def world() -> World:
    rng = np.random.default_rng(0)
    target_in, target_out, shadow_in, shadow_out = (_noise_set(rng) for _ in range(4))
    return World(_overfitted(target_in, 0), target_in, target_out, _overfitted(shadow_in, 1), shadow_in, shadow_out)


def test_per_example_losses_average_to_the_evaluated_loss(world: World) -> None:
    images, labels = world.target_out
    losses = per_example_losses(world.target, images, labels, batch_size=5, device=CPU)
    assert losses.shape == (32,) and losses.dtype == np.float64 and (losses >= 0).all()
    expected = evaluate(world.target, images, labels, num_classes=CLASSES, batch_size=32, device=CPU).loss
    assert losses.mean() == pytest.approx(expected, rel=1e-4)
    assert not world.target.training


def test_loss_threshold_finds_the_members_of_an_overfitted_model(world: World) -> None:
    assert loss_threshold_auc(world.target, world.target_in, world.target_out) > 0.8


def test_loss_threshold_is_chance_on_images_the_model_never_saw(world: World) -> None:
    # Both halves are unseen by the target: nothing tells them apart but noise.
    assert abs(loss_threshold_auc(world.target, world.shadow_in, world.shadow_out) - 0.5) < 0.2


def test_shadow_attack_finds_the_members_of_an_overfitted_model(world: World) -> None:
    auc = shadow_attack_auc(
        world.target, world.target_in, world.target_out, world.shadow, world.shadow_in, world.shadow_out
    )
    assert auc > 0.7


def test_shadow_attack_is_chance_on_images_the_target_never_saw(world: World) -> None:
    # The attack learnt on the shadow model is sound, but the target has no members among these images.
    auc = shadow_attack_auc(
        world.target, world.shadow_in, world.shadow_out, world.shadow, world.shadow_in, world.shadow_out
    )
    assert abs(auc - 0.5) < 0.2


def test_shadow_attack_balances_unequal_sets(world: World) -> None:
    images, labels = world.target_out
    fewer = (images[:10], labels[:10])
    auc = shadow_attack_auc(world.target, world.target_in, fewer, world.shadow, world.shadow_in, world.shadow_out)
    assert auc > 0.7


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((np.zeros((2, 1, SIZE, SIZE), np.float32), np.zeros(2, np.int64)), "uint8"),
        ((np.zeros((2, SIZE, SIZE), np.uint8), np.zeros(2, np.int64)), "uint8"),
        ((np.zeros((2, 1, SIZE, SIZE), np.uint8), np.zeros(3, np.int64)), "labels"),
        ((np.zeros((2, 1, SIZE, SIZE), np.uint8), np.full(2, -1)), ">= 0"),
        ((np.zeros((2, 1, SIZE, SIZE), np.uint8), np.full(2, CLASSES)), "classes"),
    ],
)
def test_malformed_sets_are_refused(world: World, members: LabelledImages, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loss_threshold_auc(world.target, members, world.target_out)


def test_models_with_different_class_counts_are_refused(world: World) -> None:
    other = build_model("smallcnn", CLASSES + 1, in_channels=1)
    with pytest.raises(ValueError, match="classes"):
        shadow_attack_auc(world.target, world.target_in, world.target_out, other, world.shadow_in, world.shadow_out)


def test_batch_size_must_be_positive(world: World) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        per_example_losses(world.target, *world.target_in, batch_size=0)
