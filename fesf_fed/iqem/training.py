"""Training of the IQEM generator against the host domain (Eq. 5 and docs/design.md, IQEM).

G learns to make IHM surrogates ``x_sy`` look like host images, judged by the patch
discriminator D_K, with least-squares GAN losses. An L1 content term (and optionally
an amplitude-consistency term) keeps G close to its input, so that a small host bank
cannot pull every surrogate onto the hosts and erase the diagnostic signal.

Training is deterministic for a seed on the CPU and resumable: a checkpoint, written
atomically every ``checkpoint_every`` steps, holds everything the remaining steps
depend on, so an interrupted run continues to the same weights as an uninterrupted one.
"""

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.functional import affine_grid, grid_sample, l1_loss, mse_loss
from tqdm.auto import tqdm

from fesf_fed.atomic import atomic_writer
from fesf_fed.config import IqemConfig
from fesf_fed.errors import ConfigError, DataError
from fesf_fed.iqem.networks import Discriminator, Generator
from fesf_fed.pixels import to_unit_float
from fesf_fed.progress import ProgressMeter, Stage

__all__ = [
    "augment_hosts",
    "discriminator_loss",
    "generator_loss",
    "load_generator",
    "train_iqem",
]

#: Smallest crop of a host, as a fraction of its area, in :func:`augment_hosts`.
MIN_CROP_AREA = 0.6
#: A checkpoint is also written when this many seconds passed since the last one.
CHECKPOINT_SECONDS = 60.0

#: What a checkpoint holds: the full training state, the per-step loss terms and the
#: settings it was made with.
CHECKPOINT_KEYS = frozenset(
    {
        "generator",
        "discriminator",
        "optimiser_g",
        "optimiser_d",
        "sampler",
        "step",
        "history",
        "config",
        "in_channels",
        "discriminator_layers",
    }
)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of D: real patches towards 1, generated ones towards 0."""
    real_loss = mse_loss(real_logits, torch.ones_like(real_logits))
    fake_loss = mse_loss(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real_loss + fake_loss)


def _log_amplitude(images: torch.Tensor) -> torch.Tensor:
    # Orthonormal FFT: the term weighs the same at every image size.
    return torch.log1p(torch.fft.rfft2(images, norm="ortho").abs())


def generator_loss(
    fake_logits: torch.Tensor, fake: torch.Tensor, x_sy: torch.Tensor, config: IqemConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of G: adversarial, content (L1) and amplitude-consistency terms.

    ``L_G = lambda_adv * mean((D(G(x)) - 1)^2) + lambda_content * |G(x) - x|_1
    + lambda_amplitude * |log(1 + |F(G(x))|) - log(1 + |F(x)|)|_1``, where F is the
    orthonormal 2-D FFT.

    Parameters
    ----------
    fake_logits : torch.Tensor
        D's logits for ``fake``.
    fake : torch.Tensor
        ``G(x_sy)``, ``(B, C, H, W)``.
    x_sy : torch.Tensor
        G's input, same shape.
    config : IqemConfig
        The weights ``lambda_adv``, ``lambda_content`` and ``lambda_amplitude``.

    Returns
    -------
    loss : torch.Tensor
        The weighted sum, a scalar to back-propagate.
    terms : dict of str to float
        The unweighted ``adversarial``, ``content`` and ``amplitude`` terms, for logging.
    """
    adversarial = mse_loss(fake_logits, torch.ones_like(fake_logits))
    content = l1_loss(fake, x_sy)
    amplitude = l1_loss(_log_amplitude(fake), _log_amplitude(x_sy))
    loss = config.lambda_adv * adversarial + config.lambda_content * content + config.lambda_amplitude * amplitude
    terms = {"adversarial": adversarial.item(), "content": content.item(), "amplitude": amplitude.item()}
    return loss, terms


def augment_hosts(hosts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crops and flips of host images, each sample drawn on its own.

    A host bank holds a handful of images; without augmentation D would memorise them
    and G would learn to paint those exact images.

    Parameters
    ----------
    hosts : torch.Tensor
        ``(B, C, H, W)`` float, any device.
    generator : torch.Generator
        A CPU generator that draws the crops and flips (reproducible on any device).

    Returns
    -------
    torch.Tensor
        The same shape and device: each sample a crop of ``MIN_CROP_AREA`` to all of its
        area, at the image's aspect ratio, resized back to H x W, flipped horizontally
        and vertically with probability 1/2 each.
    """
    if hosts.ndim != 4 or not hosts.is_floating_point():
        raise ValueError(f"hosts must be a float (B, C, H, W) tensor, got {hosts.dtype} {tuple(hosts.shape)}")
    count = hosts.shape[0]
    side = torch.sqrt(MIN_CROP_AREA + (1 - MIN_CROP_AREA) * torch.rand(count, generator=generator))
    # The crop's centre may move as far as keeps the crop inside the image.
    shift = (1 - side[:, None]) * (2 * torch.rand(count, 2, generator=generator) - 1)
    flips = torch.where(torch.rand(count, 2, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = side * flips[:, 0]
    theta[:, 1, 1] = side * flips[:, 1]
    theta[:, :, 2] = shift
    grid = affine_grid(theta.to(hosts), list(hosts.shape), align_corners=False)
    return grid_sample(hosts, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_images(images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Return ``images`` as a tensor (sharing a NumPy array's memory) once checked."""
    if not isinstance(images, np.ndarray | torch.Tensor) or images.ndim != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, np.ndarray | torch.Tensor) else type(images).__name__
        raise DataError(f"IQEM {name}: expected a non-empty (N, C, H, W) array, got {shape}")
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(f"IQEM {name}: expected uint8 or float images, got {images.dtype}")
    if images.is_floating_point():
        low, high = torch.aminmax(images)
        if not (0 <= low and high <= 1):
            raise DataError(f"IQEM {name}: float images must lie in [0, 1], got [{low.item():.4g}, {high.item():.4g}]")
    if min(images.shape[-2:]) < 8:
        raise DataError(f"IQEM {name}: images of {tuple(images.shape[-2:])} px are too small; use at least 8 x 8")
    return images


def _build(config: IqemConfig, in_channels: int, disc_layers: int) -> tuple[Generator, Discriminator]:
    # A private RNG stream: the same seed gives the same initial weights whatever
    # the caller has drawn from torch's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = Generator(in_channels, config.base_channels, config.res_blocks)
        discriminator = Discriminator(in_channels, config.disc_channels, disc_layers)
    return generator, discriminator


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: IQEM checkpoint not found; train IQEM first") from None
    except Exception as exc:  # noqa: BLE001  torch.load raises many types; re-raised as one line
        raise DataError(
            f"{path}: not a readable IQEM checkpoint ({exc.__class__.__name__}); delete it to retrain"
        ) from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise DataError(f"{path}: not an IQEM checkpoint; delete it to retrain")
    return state


def _check_matches(state: dict[str, Any], path: Path, config: IqemConfig, in_channels: int, disc_layers: int) -> None:
    # The discriminator's depth follows the image size (Discriminator.layers_for).
    # How often checkpoints are written does not change the weights, so it may differ.
    expected = {
        **config.model_dump(exclude={"checkpoint_every"}),
        "in_channels": in_channels,
        "discriminator_layers": disc_layers,
    }
    found = {
        **{name: value for name, value in state["config"].items() if name != "checkpoint_every"},
        "in_channels": state["in_channels"],
        "discriminator_layers": state.get("discriminator_layers"),
    }
    differing = [name for name in expected if expected[name] != found.get(name)]
    if differing:
        changes = ", ".join(f"{name} {found.get(name)!r} -> {expected[name]!r}" for name in differing)
        raise ConfigError(
            f"{path}: IQEM checkpoint was made with different settings ({changes}); "
            "delete the file to retrain, or use the matching iqem config"
        )


def _adversarial_step(
    generator: Generator,
    discriminator: Discriminator,
    optimiser_g: torch.optim.Optimizer,
    optimiser_d: torch.optim.Optimizer,
    surrogates: torch.Tensor,
    real: torch.Tensor,
    config: IqemConfig,
) -> dict[str, float]:
    """One update of D, then one of G, on a batch; returns the loss terms."""
    fake = generator(surrogates)
    loss_d = discriminator_loss(discriminator(real), discriminator(fake.detach()))
    optimiser_d.zero_grad(set_to_none=True)
    loss_d.backward()
    optimiser_d.step()

    # D is fixed while G learns; no gradients for its weights are needed.
    discriminator.requires_grad_(False)
    loss_g, terms = generator_loss(discriminator(fake), fake, surrogates, config)
    optimiser_g.zero_grad(set_to_none=True)
    loss_g.backward()
    optimiser_g.step()
    discriminator.requires_grad_(True)
    return {"discriminator": loss_d.item(), **terms}


def train_iqem(
    x_sy: np.ndarray | torch.Tensor,
    hosts: np.ndarray | torch.Tensor,
    config: IqemConfig,
    device: torch.device,
    checkpoint: Path,
    progress: bool = True,
    meter: ProgressMeter | None = None,
) -> Generator:
    """Train G to carry surrogates into the host domain; resume or reuse ``checkpoint``.

    Parameters
    ----------
    x_sy : np.ndarray or torch.Tensor
        ``(N, C, H, W)`` uint8 or float in [0, 1]: the training split after the first
        IHM. Kept where it is; only batches move to ``device``.
    hosts : np.ndarray or torch.Tensor
        ``(M, C, H, W)`` uint8 or float in [0, 1]: the host images, D's "real" domain.
    config : IqemConfig
        Network sizes, loss weights, optimiser and schedule.
    device : torch.device
        Where to train.
    checkpoint : Path
        Written atomically every ``config.checkpoint_every`` steps and at the end. If it
        exists, training resumes from it, and a finished one is returned at once.
    progress : bool
        Show a progress bar with the loss terms.
    meter : ProgressMeter, optional
        Told of the ``iqem`` stage and, every few seconds, of the steps done (with the
        steps per second and the time left), for a site's progress report.

    Returns
    -------
    Generator
        In eval mode, on ``device``.

    Raises
    ------
    DataError
        For unusable images, or an unreadable checkpoint.
    ConfigError
        If the checkpoint was made with another config, channel count or image size.

    Notes
    -----
    The discriminator uses ``config.disc_layers`` downsamplings, fewer when the images
    are too small for them (see :meth:`Discriminator.layers_for`). The checkpoint also
    keeps the per-step loss terms under ``"history"``.
    """
    checkpoint = Path(checkpoint)
    x_sy, hosts = _as_images(x_sy, "x_sy"), _as_images(hosts, "hosts")
    if x_sy.shape[1] != hosts.shape[1]:
        raise DataError(
            f"IQEM: x_sy has {x_sy.shape[1]} channel(s) but the hosts have {hosts.shape[1]}; use matching images"
        )
    in_channels = x_sy.shape[1]
    disc_layers = Discriminator.layers_for(min(*x_sy.shape[-2:], *hosts.shape[-2:]), config.disc_layers)
    generator, discriminator = _build(config, in_channels, disc_layers)
    generator.to(device)
    discriminator.to(device)
    optimiser_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    sampler = torch.Generator().manual_seed(config.seed)
    start, history = 0, []

    if checkpoint.exists():
        state = _read_checkpoint(checkpoint)
        _check_matches(state, checkpoint, config, in_channels, disc_layers)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        optimiser_g.load_state_dict(state["optimiser_g"])
        optimiser_d.load_state_dict(state["optimiser_d"])
        sampler.set_state(state["sampler"])
        # A finished checkpoint leaves no steps to run: its G is returned as it is.
        start, history = state["step"], state["history"]

    generator.train()
    discriminator.train()
    meter = meter or ProgressMeter(None, "")
    meter.stage(Stage.IQEM, config.steps, done=start)
    last_saved = time.monotonic()
    bar = tqdm(total=config.steps, initial=start, desc="IQEM", unit="step", disable=not progress)
    with bar:
        for step in range(start, config.steps):
            # Sampling with replacement: a batch may be larger than a small training split.
            surrogates = to_unit_float(x_sy[torch.randint(len(x_sy), (config.batch_size,), generator=sampler)], device)
            real = to_unit_float(hosts[torch.randint(len(hosts), (config.batch_size,), generator=sampler)], device)
            real = augment_hosts(real, sampler)
            terms = _adversarial_step(generator, discriminator, optimiser_g, optimiser_d, surrogates, real, config)
            history.append(terms)
            bar.set_postfix(
                D=f"{terms['discriminator']:.3g}",
                G_adv=f"{terms['adversarial']:.3g}",
                content=f"{terms['content']:.2g}",
                refresh=False,
            )
            bar.update()
            meter.advance()
            done = step + 1
            # Also by time: at 512 px on a CPU, checkpoint_every steps can take many minutes.
            due = time.monotonic() - last_saved > CHECKPOINT_SECONDS
            if due or done % config.checkpoint_every == 0 or done == config.steps:
                state = {
                    "generator": generator.state_dict(),
                    "discriminator": discriminator.state_dict(),
                    "optimiser_g": optimiser_g.state_dict(),
                    "optimiser_d": optimiser_d.state_dict(),
                    "sampler": sampler.get_state(),
                    "step": done,
                    "history": history,
                    "config": config.model_dump(),
                    "in_channels": in_channels,
                    "discriminator_layers": disc_layers,
                }
                with atomic_writer(checkpoint) as stream:
                    torch.save(state, stream)
                last_saved = time.monotonic()
    return generator.eval()


def load_generator(checkpoint: Path, device: torch.device) -> Generator:
    """Load the generator of a finished IQEM training, in eval mode, on ``device``.

    Raises
    ------
    DataError
        If the file is missing, unreadable, or its training has not finished
        (run :func:`train_iqem` again with the same config to finish it).
    """
    checkpoint = Path(checkpoint)
    state = _read_checkpoint(checkpoint)
    config = IqemConfig.model_validate(state["config"])
    if state["step"] < config.steps:
        raise DataError(
            f"{checkpoint}: IQEM training stopped at step {state['step']} of {config.steps}; "
            "run the build again to finish it"
        )
    generator = Generator(state["in_channels"], config.base_channels, config.res_blocks)
    generator.load_state_dict(state["generator"])
    return generator.to(device).eval()
