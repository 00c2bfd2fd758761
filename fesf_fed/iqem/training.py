"""Training of the IQEM generator against the host domain (Eq. 5 and docs/design.md, IQEM).

G learns to carry IHM surrogates ``x_sy`` into the host domain K: judged by the patch
discriminator D_K (least-squares GAN losses), and pulled towards each image's own host
by a host term, while a content term keeps it near its input, so that the plaintext's
information survives (the second IHM puts more of it back). The two terms' weights set
how far G goes: with squared errors, their balance point is the share
``lambda_host / (lambda_content + lambda_host)`` of the way from x_sy to its host.

Training stops when G stops getting closer to the hosts: every ``check_every`` steps
the SSIM of G's output to its host and to its plaintext is measured on a fixed sample of
the training images; when the best SSIM to the host has not risen by ``min_gain`` for
``patience`` checks (or after ``steps`` steps), training ends and the G of the best
check is kept. Every step's losses and every check are kept in the checkpoint and
written to ``<checkpoint>-log.csv`` beside it.

Training is deterministic for a seed on the CPU and resumable: a checkpoint, written
atomically every ``checkpoint_every`` steps, holds everything the remaining steps
depend on, so an interrupted run continues to the same weights as an uninterrupted one.
"""

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch.nn.functional import affine_grid, grid_sample, l1_loss, mse_loss
from tqdm.auto import tqdm

from fesf_fed.atomic import atomic_writer
from fesf_fed.config import IqemConfig
from fesf_fed.errors import ConfigError, DataError
from fesf_fed.iqem.networks import Discriminator, Generator, IdentityGenerator
from fesf_fed.pixels import to_unit_float
from fesf_fed.progress import ProgressMeter, Stage

__all__ = [
    "IqemPairs",
    "augment_hosts",
    "discriminator_loss",
    "generator_loss",
    "iqem_summary",
    "load_generator",
    "log_path",
    "train_iqem",
]

logger = logging.getLogger(__name__)

#: Smallest crop of a host, as a fraction of its area, in :func:`augment_hosts`.
MIN_CROP_AREA = 0.6
#: A checkpoint is also written when this many seconds passed since the last one.
CHECKPOINT_SECONDS = 60.0
#: Training images (a fixed seeded sample) that every check measures G on.
CHECK_IMAGES = 32
#: The per-step log beside a checkpoint ``x.pt`` is ``x-log.csv`` (:func:`log_path`).
LOG_SUFFIX = "-log.csv"
_LOG_COLUMNS = ("step", "discriminator", "adversarial", "content", "host", "amplitude", "ssim_host", "ssim_plain")

#: What a checkpoint holds: the full training state, the per-step loss terms, the checks,
#: the best check's G, why training stopped (None while it runs) and the settings.
CHECKPOINT_KEYS = frozenset(
    {
        "generator",
        "discriminator",
        "optimiser_g",
        "optimiser_d",
        "sampler",
        "step",
        "history",
        "checks",
        "best",
        "stopped",
        "config",
        "in_channels",
        "discriminator_layers",
    }
)


@dataclass
class IqemPairs:
    """The training split's x_sy with, for each, its host in the bank and its plaintext: what G trains and is checked on.

    Attributes
    ----------
    x_sy, plain : np.ndarray or torch.Tensor
        ``(N, C, H, W)`` uint8 or float in [0, 1]; image i of each belongs together.
    host_index : np.ndarray
        ``(N,)`` each image's host, an index into the bank (hosts are looked up per batch,
        not copied per image).
    """

    x_sy: np.ndarray | torch.Tensor
    plain: np.ndarray | torch.Tensor
    host_index: np.ndarray


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of D: real patches towards 1, generated ones towards 0."""
    real_loss = mse_loss(real_logits, torch.ones_like(real_logits))
    fake_loss = mse_loss(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real_loss + fake_loss)


def _log_amplitude(images: torch.Tensor) -> torch.Tensor:
    # Orthonormal FFT: the term weighs the same at every image size.
    return torch.log1p(torch.fft.rfft2(images, norm="ortho").abs())


def generator_loss(
    fake_logits: torch.Tensor, fake: torch.Tensor, x_sy: torch.Tensor, hosts: torch.Tensor, config: IqemConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of G: adversarial, content, host and amplitude-consistency terms.

    ``L_G = lambda_adv * mean((D(G) - 1)^2) + lambda_content * mean((G - x_sy)^2)
    + lambda_host * mean((G - h)^2) + lambda_amplitude * |log(1 + |F(G)|) - log(1 + |F(x_sy)|)|_1``,
    with ``G = G(x_sy, h)`` and F the orthonormal 2-D FFT. Squared errors, so that the
    content and host terms balance at a blend of x_sy and h rather than at either end.

    Parameters
    ----------
    fake_logits : torch.Tensor
        D's logits for ``fake``.
    fake : torch.Tensor
        ``G(x_sy, h)``, ``(B, C, H, W)``.
    x_sy, hosts : torch.Tensor
        G's inputs, same shape.
    config : IqemConfig
        The weights ``lambda_adv``, ``lambda_content``, ``lambda_host`` and ``lambda_amplitude``.

    Returns
    -------
    loss : torch.Tensor
        The weighted sum, a scalar to back-propagate.
    terms : dict of str to float
        The unweighted ``adversarial``, ``content``, ``host`` and ``amplitude`` terms, for logging.
    """
    adversarial = mse_loss(fake_logits, torch.ones_like(fake_logits))
    content = mse_loss(fake, x_sy)
    host = mse_loss(fake, hosts)
    amplitude = l1_loss(_log_amplitude(fake), _log_amplitude(x_sy))
    loss = (
        config.lambda_adv * adversarial
        + config.lambda_content * content
        + config.lambda_host * host
        + config.lambda_amplitude * amplitude
    )
    terms = {
        "adversarial": adversarial.item(),
        "content": content.item(),
        "host": host.item(),
        "amplitude": amplitude.item(),
    }
    return loss, terms


def augment_hosts(hosts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crops and flips of images, each sample drawn on its own (differentiable).

    D sees real hosts and G's outputs through the same augmentation (DiffAugment, Zhao
    et al. 2020): a bank of a few hundred hosts would otherwise let D memorise them, and
    augmenting the real side alone would let D tell them apart by the resampling.

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


def _checkpoint_state(path: Path) -> dict[str, Any] | str:
    """A checkpoint's contents, or why the file is damaged (a phrase without the path).

    Raises
    ------
    DataError
        If the file is missing or cannot be opened (permissions): that is no damage.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: IQEM checkpoint not found; train IQEM first") from None
    except PermissionError as exc:
        raise DataError(f"{path}: cannot read the IQEM checkpoint ({exc.strerror}); check its permissions") from None
    except Exception as exc:  # noqa: BLE001  torch.load raises many types on a truncated or foreign file
        return f"not a readable IQEM checkpoint ({exc.__class__.__name__})"
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        return "not an IQEM checkpoint"
    return state


def _read_checkpoint(path: Path) -> dict[str, Any]:
    state = _checkpoint_state(path)
    if isinstance(state, str):
        raise DataError(f"{path}: {state}; delete it to retrain")
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
    networks: tuple[Generator, Discriminator],
    optimisers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    config: IqemConfig,
    sampler: torch.Generator,
) -> dict[str, float]:
    """One update of D, then one of G, on a batch ``(x_sy, their hosts, real hosts)``; returns the loss terms."""
    generator, discriminator = networks
    optimiser_g, optimiser_d = optimisers
    surrogates, hosts, real = batch
    fake = generator(surrogates, hosts)
    seen = augment_hosts(fake, sampler)  # D sees G's output through the real hosts' augmentation
    loss_d = discriminator_loss(discriminator(augment_hosts(real, sampler)), discriminator(seen.detach()))
    optimiser_d.zero_grad(set_to_none=True)
    loss_d.backward()
    optimiser_d.step()

    # D is fixed while G learns; no gradients for its weights are needed.
    discriminator.requires_grad_(False)
    loss_g, terms = generator_loss(discriminator(seen), fake, surrogates, hosts, config)
    optimiser_g.zero_grad(set_to_none=True)
    loss_g.backward()
    optimiser_g.step()
    discriminator.requires_grad_(True)
    return {"discriminator": loss_d.item(), **terms}


def log_path(checkpoint: Path) -> Path:
    """The per-step CSV log of the training whose checkpoint is ``checkpoint``: ``<name>-log.csv`` beside it."""
    return checkpoint.with_name(checkpoint.stem + LOG_SUFFIX)


def _weights(generator: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of G's weights on the CPU (the best check's, kept while training goes on)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in generator.state_dict().items()}


def _mean_ssim(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean SSIM (scikit-image, data range 1) of image pairs ``(N, C, H, W)``, as the quality tables compute it."""
    values = [
        structural_similarity(a, b, data_range=1.0, channel_axis=0)
        for a, b in zip(first.cpu().numpy(), second.cpu().numpy())
    ]
    return float(np.mean(values))


@torch.no_grad()
def _check(
    generator: Generator, sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor], step: int
) -> dict[str, float]:
    """SSIM of G's output to its host and to its plaintext on the fixed check sample."""
    x_sy, hosts, plain = sample
    generator.eval()
    # A training batch at a time: 32 images at once would hold 4x a step's activations (512 px).
    output = torch.cat(
        [generator(x_sy[start : start + 8], hosts[start : start + 8]) for start in range(0, len(x_sy), 8)]
    )
    generator.train()
    return {"step": step, "ssim_host": _mean_ssim(output, hosts), "ssim_plain": _mean_ssim(output, plain)}


def _stop_reason(checks: list[dict[str, float]], best: dict[str, Any], config: IqemConfig) -> str | None:
    """Why training should stop after the latest check, or None to go on (the module docstring's rule)."""
    since_best = sum(1 for check in checks if check["step"] > best["step"])
    if since_best >= config.patience:
        return (
            f"SSIM to the host rose less than {config.min_gain} in {config.patience} checks "
            f"(best {best['ssim_host']:.3f} at step {best['step']})"
        )
    return None


def _write_log(path: Path, history: list[dict[str, float]], checks: list[dict[str, float]]) -> None:
    """Every step's loss terms, with the check's SSIMs on the steps that had one, as CSV."""
    by_step = {int(check["step"]): check for check in checks}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    if 0 in by_step:
        writer.writerow(by_step[0])
    for step, terms in enumerate(history, start=1):
        writer.writerow({"step": step, **terms, **by_step.get(step, {})})
    with atomic_writer(path) as stream:
        stream.write(text.getvalue().encode())


def train_iqem(
    pairs: IqemPairs,
    bank: np.ndarray | torch.Tensor,
    config: IqemConfig,
    device: torch.device,
    checkpoint: Path,
    progress: bool = True,
    meter: ProgressMeter | None = None,
) -> Generator | IdentityGenerator:
    """Train G to carry surrogates into the host domain; resume or reuse ``checkpoint``.

    Parameters
    ----------
    pairs : IqemPairs
        The training split after the first IHM (``x_sy``), each image's host in ``bank``
        and its plaintext. Kept where they are; only batches move to ``device``.
    bank : np.ndarray or torch.Tensor
        ``(M, C, H, W)`` uint8 or float in [0, 1]: the host bank, D's "real" domain.
    config : IqemConfig
        Network sizes, loss weights, optimiser, schedule and stopping rule.
    device : torch.device
        Where to train.
    checkpoint : Path
        Written atomically every ``config.checkpoint_every`` steps and at the end, with
        its per-step log beside it (:func:`log_path`). If it exists, training resumes from it, and a
        finished one is returned at once; a damaged one (truncated, not a checkpoint) is
        reported in one warning and training starts again from step 0.
    progress : bool
        Show a progress bar with the loss terms.
    meter : ProgressMeter, optional
        Told of the ``iqem`` stage and, every few seconds, of the steps done (with the
        steps per second and the time left), for a site's progress report.

    Returns
    -------
    Generator
        The G of the best check, in eval mode, on ``device``; an
        :class:`~fesf_fed.iqem.IdentityGenerator` when ``config.steps`` is 0 (IQEM off).

    Raises
    ------
    DataError
        For unusable images, or a checkpoint that cannot be opened (permissions).
    ConfigError
        If the checkpoint was made with another config, channel count or image size.

    Notes
    -----
    The discriminator uses ``config.disc_layers`` downsamplings, fewer when the images
    are too small for them (see :meth:`Discriminator.layers_for`). The checkpoint keeps
    the per-step loss terms under ``"history"`` and the checks under ``"checks"``.
    """
    if config.steps == 0:
        return IdentityGenerator()
    checkpoint = Path(checkpoint)
    x_sy, plain, bank = _as_images(pairs.x_sy, "x_sy"), _as_images(pairs.plain, "plaintexts"), _as_images(bank, "bank")
    host_index = torch.as_tensor(np.asarray(pairs.host_index, dtype=np.int64))
    if x_sy.shape != plain.shape or host_index.shape != (len(x_sy),):
        raise DataError(
            f"IQEM: x_sy {tuple(x_sy.shape)}, plaintexts {tuple(plain.shape)} and host indices "
            f"{tuple(host_index.shape)} must describe the same images"
        )
    if len(host_index) and not 0 <= int(host_index.min()) <= int(host_index.max()) < len(bank):
        raise DataError(f"IQEM: host indices must lie in [0, {len(bank)}), the bank's size")
    if x_sy.shape[1] != bank.shape[1]:
        raise DataError(
            f"IQEM: x_sy has {x_sy.shape[1]} channel(s) but the host bank has {bank.shape[1]}; use matching images"
        )
    in_channels = x_sy.shape[1]
    disc_layers = Discriminator.layers_for(min(*x_sy.shape[-2:], *bank.shape[-2:]), config.disc_layers)
    generator, discriminator = _build(config, in_channels, disc_layers)
    generator.to(device)
    discriminator.to(device)
    optimiser_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    sampler = torch.Generator().manual_seed(config.seed)
    # The check sample is drawn from its own stream, so it does not move the training draws.
    chosen = torch.randperm(len(x_sy), generator=torch.Generator().manual_seed(config.seed))[:CHECK_IMAGES]
    sample = (
        to_unit_float(x_sy[chosen], device),
        to_unit_float(bank[host_index[chosen]], device),
        to_unit_float(plain[chosen], device),
    )
    start: int = 0
    history: list[dict[str, float]] = []
    checks: list[dict[str, float]] = []
    best: dict[str, Any] = {}
    stopped: str | None = None

    state = _checkpoint_state(checkpoint) if checkpoint.exists() else None
    if isinstance(state, str):
        # Damaged (truncated by a full disk, a bad copy): nothing in it can be trusted, so training restarts.
        logger.warning("%s: damaged IQEM checkpoint (%s); IQEM is trained again from step 0", checkpoint, state)
        state = None
    if state is not None:
        _check_matches(state, checkpoint, config, in_channels, disc_layers)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        optimiser_g.load_state_dict(state["optimiser_g"])
        optimiser_d.load_state_dict(state["optimiser_d"])
        sampler.set_state(state["sampler"])
        start, history, checks, best, stopped = (
            state["step"],
            state["history"],
            state["checks"],
            state["best"],
            state["stopped"],
        )
    else:
        checks = [_check(generator, sample, 0)]  # G before training is the identity: x_sy itself
        best = {**checks[0], "generator": _weights(generator)}

    def save(done: int) -> None:
        state = {
            "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(),
            "optimiser_g": optimiser_g.state_dict(),
            "optimiser_d": optimiser_d.state_dict(),
            "sampler": sampler.get_state(),
            "step": done,
            "history": history,
            "checks": checks,
            "best": best,
            "stopped": stopped,
            "config": config.model_dump(),
            "in_channels": in_channels,
            "discriminator_layers": disc_layers,
        }
        with atomic_writer(checkpoint) as stream:
            torch.save(state, stream)
        _write_log(log_path(checkpoint), history, checks)

    generator.train()
    discriminator.train()
    meter = meter or ProgressMeter(None, "")
    meter.stage(Stage.IQEM, config.steps, done=start)
    last_saved = time.monotonic()
    bar = tqdm(total=config.steps, initial=start, desc="IQEM", unit="step", disable=not progress)
    with bar:
        for step in range(start, config.steps):
            if stopped:  # a finished checkpoint leaves no steps to run
                break
            # Sampling with replacement: a batch may be larger than a small training split.
            picked = torch.randint(len(x_sy), (config.batch_size,), generator=sampler)
            real = to_unit_float(bank[torch.randint(len(bank), (config.batch_size,), generator=sampler)], device)
            batch = (to_unit_float(x_sy[picked], device), to_unit_float(bank[host_index[picked]], device), real)
            terms = _adversarial_step((generator, discriminator), (optimiser_g, optimiser_d), batch, config, sampler)
            history.append(terms)
            done = step + 1
            # The last step is checked too, so that no step after the last check is lost.
            if done % config.check_every == 0 or done == config.steps:
                checks.append(_check(generator, sample, done))
                if checks[-1]["ssim_host"] >= best["ssim_host"] + config.min_gain:
                    best = {**checks[-1], "generator": _weights(generator)}
                stopped = _stop_reason(checks, best, config)
                logger.info(
                    "IQEM step %d: SSIM of x_su to its host %.3f (x_sy %.3f), to its plaintext %.3f",
                    done,
                    checks[-1]["ssim_host"],
                    checks[0]["ssim_host"],
                    checks[-1]["ssim_plain"],
                )
            if done == config.steps and not stopped:
                stopped = f"the step limit ({config.steps}) was reached (best check at step {best['step']})"
            bar.set_postfix(
                D=f"{terms['discriminator']:.3g}",
                G_adv=f"{terms['adversarial']:.3g}",
                host=f"{checks[-1]['ssim_host']:.3f}",
                refresh=False,
            )
            bar.update()
            meter.advance()
            # Also by time: at 512 px on a CPU, checkpoint_every steps can take many minutes.
            due = time.monotonic() - last_saved > CHECKPOINT_SECONDS
            if due or done % config.checkpoint_every == 0 or stopped:
                save(done)
                last_saved = time.monotonic()
            if stopped:
                meter.advance(config.steps - done)  # the stage is done: its count says so
                bar.update(config.steps - done)
    if stopped:
        logger.info("IQEM stopped at step %d: %s", len(history), stopped)
    generator.load_state_dict(best["generator"])
    return generator.eval()


def iqem_summary(checkpoint: Path) -> dict[str, Any]:
    """What a finished IQEM training did: steps run, why it stopped, and the checks (for the build manifest).

    Raises
    ------
    DataError
        If the checkpoint is missing or unreadable.
    """
    state = _read_checkpoint(Path(checkpoint))
    best = {key: value for key, value in state["best"].items() if key != "generator"}
    return {"steps": state["step"], "stopped": state["stopped"], "best": best, "checks": state["checks"]}


def load_generator(
    checkpoint: Path, device: torch.device, config: IqemConfig | None = None
) -> Generator | IdentityGenerator:
    """Load the G kept by a finished IQEM training (its best check's), in eval mode, on ``device``.

    ``config`` with ``steps`` 0 (IQEM off) gives the identity without reading ``checkpoint``.

    Raises
    ------
    DataError
        If the file is missing, unreadable, or its training has not finished
        (run :func:`train_iqem` again with the same config to finish it).
    """
    if config is not None and config.steps == 0:
        return IdentityGenerator()
    checkpoint = Path(checkpoint)
    state = _read_checkpoint(checkpoint)
    stored = IqemConfig.model_validate(state["config"])
    if not state["stopped"]:
        raise DataError(
            f"{checkpoint}: IQEM training stopped at step {state['step']} of at most {stored.steps}; "
            "run the build again to finish it"
        )
    generator = Generator(state["in_channels"], stored.base_channels, stored.res_blocks)
    generator.load_state_dict(state["best"]["generator"])
    return generator.to(device).eval()
