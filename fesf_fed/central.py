"""The centralised reference: one model trained on every site's images pooled in one place.

The paper trains centrally; FESF-Fed trains federated. Training the same model on the
same sites' splits and surrogates, pooled, tells the cost of federation apart from the
cost of the surrogates (``fesf-reproduce`` reports both).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fesf_fed.config import SiteConfig
from fesf_fed.errors import DataError
from fesf_fed.models import build_model
from fesf_fed.recipe import Recipe
from fesf_fed.task import DEFAULT_RECIPE, Evaluation, evaluate, train
from fesf_fed.training_data import SiteData, load_site_data


def pooled_site_data(configs: Sequence[SiteConfig], mode: str, progress: bool = False) -> SiteData:
    """Every site's training and test images in ``mode``, concatenated in site order.

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
    return SiteData(
        np.concatenate([part.train_images for part in parts]),
        np.concatenate([part.train_labels for part in parts]),
        np.concatenate([part.test_images for part in parts]),
        np.concatenate([part.test_labels for part in parts]),
        first.classes,
    )


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
) -> Evaluation:
    """Train a new model on ``data``'s training images and evaluate it on its test images.

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
        (``RunSettings.recipe()``). The learning-rate schedule spans the ``epochs``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            model_name, len(data.classes), data.channels, weights=weights, image_size=int(data.train_images.shape[-1])
        )
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
    )
    return evaluate(
        model,
        data.test_images,
        data.test_labels,
        num_classes=len(data.classes),
        batch_size=batch_size,
        device=device,
    )
