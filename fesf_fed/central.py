"""The centralised reference: one model trained on every site's images pooled in one place.

The paper trains centrally; FESF-Fed trains federated. Training the same model on the
same sites' splits and surrogates, pooled, tells the cost of federation apart from the
cost of the surrogates (``fesf-reproduce`` reports both).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fesf_fed import dp_sgd
from fesf_fed.config import SiteConfig
from fesf_fed.errors import DataError
from fesf_fed.models import build_model
from fesf_fed.recipe import Recipe
from fesf_fed.task import DEFAULT_RECIPE, Evaluation, evaluate, train
from fesf_fed.training_data import SiteData, load_site_data


def pooled_site_data(configs: Sequence[SiteConfig], mode: str, progress: bool = False) -> SiteData:
    """Every site's training, validation and test images in ``mode``, concatenated in site order.

    Parameters
    ----------
    configs : sequence of SiteConfig
        The sites; their surrogates are built, or reused from their caches.
    mode : {"plaintext", "x_sy", "x_su", "x_su_prime"}
        What to train and test on.
    progress : bool
        Show progress bars while building.

    Raises
    ------
    DataError
        When the sites do not share their class names or image shape.
    """
    if not configs:
        raise ValueError("no sites to pool")
    parts = [load_site_data(config, mode, progress=progress) for config in configs]
    first = parts[0]
    for config, part in zip(configs[1:], parts[1:]):
        if part.classes != first.classes or part.train_images.shape[1:] != first.train_images.shape[1:]:
            raise DataError(
                f"site {config.site}: classes {part.classes} and images {part.train_images.shape[1:]} differ from "
                f"site {configs[0].site}'s ({first.classes}, {first.train_images.shape[1:]}); sites must match to pool"
            )

    def joined(field: str) -> np.ndarray:
        return np.concatenate([getattr(part, field) for part in parts])

    return SiteData(
        joined("train_images"),
        joined("train_labels"),
        joined("val_images"),
        joined("val_labels"),
        joined("test_images"),
        joined("test_labels"),
        first.classes,
    )


@dataclass(frozen=True)
class CentralResult:
    """A central model's test figures, and which epoch's model they are of.

    ``epoch`` is the epoch (from 1) with the best validation macro-F1, the earliest on a tie,
    and ``validation_f1`` that figure; without validation images, the last epoch and None.
    ``epsilon`` is the DP-SGD privacy spent on the pooled images over all the epochs, at the
    recipe's ``dp_sgd_delta``; None without DP-SGD.
    """

    test: Evaluation
    epoch: int
    validation_f1: float | None
    epsilon: float | None = None


class _BestEpoch:
    """After each epoch, the model's validation macro-F1; keeps a copy of the best model's weights."""

    def __init__(self, model: torch.nn.Module, data: SiteData, batch_size: int, device: torch.device) -> None:
        self.model, self.data, self.batch_size, self.device = model, data, batch_size, device
        self.epoch = 0
        self.f1: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def __call__(self, epoch: int) -> None:
        f1 = evaluate(
            self.model,
            self.data.val_images,
            self.data.val_labels,
            num_classes=len(self.data.classes),
            batch_size=self.batch_size,
            device=self.device,
        ).f1
        if self.f1 is None or f1 > self.f1:
            self.epoch, self.f1 = epoch, f1
            self.state = {name: value.detach().clone() for name, value in self.model.state_dict().items()}


def train_central(
    data: SiteData,
    *,
    model_name: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    weights: Path | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> CentralResult:
    """Train a new model on ``data``'s training images; evaluate the best epoch's on its test images.

    After every epoch the model is evaluated on ``data``'s validation images, and the one
    with the best macro-F1 there is the result (as a federation keeps its best round's);
    without validation images, the last epoch's.

    Parameters
    ----------
    data : SiteData
        Pooled images (:func:`pooled_site_data`).
    model_name : str
        A name of :data:`fesf_fed.models.MODEL_NAMES`.
    epochs, lr, batch_size : int, float, int
        The schedule: for parity with a federation, its rounds times its local epochs.
    seed : int
        Fixes the initial weights (as the federation's seed does) and the shuffling.
    device : torch.device
        Where to train.
    weights : Path, optional
        A local torchvision state dict for the backbone.
    recipe : Recipe
        How to train (:class:`fesf_fed.recipe.Recipe`): the federation's, for parity
        (``RunSettings.recipe()``). The learning-rate schedule spans the ``epochs``; with
        DP-SGD, ``epsilon`` is the privacy spent over them.

    Raises
    ------
    ConfigError
        With DP-SGD, for a model that Opacus cannot train privately.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            model_name, len(data.classes), data.channels, weights=weights, image_size=int(data.train_images.shape[-1])
        )
    accountant = None
    if recipe.dp_sgd:
        dp_sgd.check_model(model, model_name)
        accountant = dp_sgd.new_accountant()
    best = _BestEpoch(model, data, batch_size, device) if len(data.val_labels) else None
    train(
        model,
        data.train_images,
        data.train_labels,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        device=device,
        seed=seed,
        recipe=recipe,
        after_epoch=best,
        accountant=accountant,
    )
    if best is not None and best.state is not None:
        model.load_state_dict(best.state)
    test = evaluate(
        model,
        data.test_images,
        data.test_labels,
        num_classes=len(data.classes),
        batch_size=batch_size,
        device=device,
    )
    epsilon = None if accountant is None else accountant.get_epsilon(recipe.dp_sgd_delta)
    return CentralResult(test, best.epoch if best else epochs, best.f1 if best else None, epsilon)
