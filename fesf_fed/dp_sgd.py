"""DP-SGD with Opacus: per-image clipping and Gaussian noise in a site's training, and its privacy accounting.

With ``dp-sgd-noise-multiplier`` above 0 (:class:`fesf_fed.recipe.Recipe`), :func:`fesf_fed.task.train`
trains through :func:`private_training`: Opacus computes each image's gradient, clips it to
``dp-sgd-max-grad-norm`` and adds Gaussian noise of ``noise multiplier x max grad norm`` to
their sum at every step. Batches are Poisson-sampled (each image joins each step's batch on
its own with probability ``batch size / images``), the sampling that Opacus's RDP accountant
assumes; a shuffled fixed-size batch would make the reported epsilon too small.

The accountant (Opacus's ``RDPAccountant``) keeps every step; its ``state_dict`` is what a
site keeps on disk between rounds (:func:`read_accountant`, :func:`write_accountant`), so the
epsilon it reports covers every round it took part in, a resumed run's earlier ones included.

The sampling and the noise come from generators seeded by the operating system, never from
the run's seed: anyone who knows the run config could otherwise regenerate the noise and take
it off. Opacus's ``secure_mode`` (a cryptographically secure generator that also withstands
floating-point attacks on the noise) needs ``torchcsprng`` and is not used: the noise is
torch's ordinary generator's, which is what Opacus does by default.

Opacus is imported only when DP-SGD is on: it takes seconds to import, and a deployed site
starts a process per message.
"""

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fesf_fed.atomic import write_json
from fesf_fed.errors import ConfigError
from fesf_fed.home import fesf_home
from fesf_fed.recipe import Recipe

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant


def new_accountant() -> "RDPAccountant":
    """An empty accountant: Opacus's Rényi-DP one, which composes steps of any noise and sampling rate."""
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


def check_model(model: nn.Module, name: str) -> None:
    """Refuse a model that Opacus cannot train privately (batch normalisation mixes a batch's images).

    Raises
    ------
    ConfigError
        One line naming the model and what to choose instead.
    """
    from opacus.validators import ModuleValidator

    if problems := ModuleValidator.validate(model, strict=False):
        reason = str(problems[0]).split(". ")[0]
        raise ConfigError(
            f"run config dp-sgd-noise-multiplier: Opacus cannot train model {name} with DP-SGD ({reason}); "
            "choose a model without batch normalisation (smallcnn, smallcnn_wide, vgg16) or set it to 0"
        )


@dataclass(frozen=True)
class PrivateSteps:
    """What :func:`fesf_fed.task.train` uses in place of its model's plain optimiser and shuffled batches."""

    optimiser: torch.optim.Optimizer
    sample_rate: float
    sampling: torch.Generator

    def batch(self, count: int) -> torch.Tensor:
        """A Poisson-sampled batch of indices into ``count`` images; it may be empty, and still takes its step."""
        return torch.nonzero(torch.rand(count, generator=self.sampling) < self.sample_rate).flatten()


@contextmanager
def private_training(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    recipe: Recipe,
    batch_size: int,
    count: int,
    accountant: "RDPAccountant",
) -> Iterator[PrivateSteps]:
    """Train ``model`` with DP-SGD inside the block; each step is recorded in ``accountant``.

    Parameters
    ----------
    model : torch.nn.Module
        The model, already on its device; its forward pass records what Opacus needs while the
        block runs, and it is a plain module again afterwards.
    optimiser : torch.optim.Optimizer
        The recipe's optimiser, which takes the noisy clipped gradients.
    recipe : Recipe
        Its ``dp_sgd_noise_multiplier`` and ``dp_sgd_max_grad_norm``.
    batch_size, count : int
        The expected batch size and the number of training images: each image joins each
        batch with probability ``batch_size / count``.
    accountant : opacus.accountants.RDPAccountant
        Where every step goes (:func:`new_accountant`, or one a site kept).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    # Per-image gradients come from backward hooks, which an in-place activation breaks (torch refuses
    # to modify a hooked output in place); out of place, the values are the same.
    in_place = [module for module in model.modules() if getattr(module, "inplace", False)]
    for module in in_place:
        module.inplace = False  # type: ignore[assignment]  # torch types module attributes as tensors or modules
    device = next(model.parameters()).device
    noise, sampling = torch.Generator(device), torch.Generator()
    # Seeded from the operating system's entropy, not from the run's public seed.
    noise.seed()
    sampling.seed()
    sample_rate = min(1.0, batch_size / count)
    hooked = GradSampleModule(model)
    private = DPOptimizer(
        optimiser,
        noise_multiplier=recipe.dp_sgd_noise_multiplier,
        max_grad_norm=recipe.dp_sgd_max_grad_norm,
        # The mean over an expected batch, not the batch drawn: its size must not depend on the images.
        expected_batch_size=batch_size,
        generator=noise,
    )
    private.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    try:
        with warnings.catch_warnings():
            # The images need no gradient, so the hooks fire on module outputs, as they should.
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            yield PrivateSteps(private, sample_rate, sampling)
    finally:
        hooked.cleanup()
        for module in in_place:
            module.inplace = True  # type: ignore[assignment]


def accountant_path(run: str, site: str) -> Path:
    """Where a site keeps its DP-SGD accountant for a run: ``$FESF_HOME/privacy/<run>/<site>.json``."""
    return fesf_home() / "privacy" / run / f"{site}.json"


def read_accountant(path: Path) -> "RDPAccountant":
    """The accountant :func:`write_accountant` left at ``path``; an empty one where there is none."""
    accountant = new_accountant()
    if path.is_file():
        accountant.load_state_dict(json.loads(path.read_text()))
    return accountant


def write_accountant(accountant: "RDPAccountant", path: Path) -> None:
    """Keep ``accountant``'s steps at ``path`` (readable by the owner only, written atomically)."""
    write_json(path, accountant.state_dict())
