"""Learned inversion: a U-Net the attacker trains on its own (surrogate, plaintext) pairs.

The attacker converts its own images with its own key, hosts and generator (see
:mod:`fesf_fed.audit.world`), which gives it pairs to learn the inverse map from, then
applies the network to the victim's surrogates. The audit records the victim SSIM after
every epoch, so a curve that is still rising says the budget, not the method, stopped it.
The network is a small U-Net (Ronneberger et al. 2015) trained with an L1 loss.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fesf_fed.pixels import to_unit_float

__all__ = ["InversionNet", "invert", "train_inversion"]


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class InversionNet(nn.Module):
    """A three-level U-Net from a surrogate to its plaintext, any size (padded inside to a multiple of 4).

    Parameters
    ----------
    channels : int
        Image channels (1 or 3), the same in and out.
    width : int
        Channels of the first level (doubled per level).
    """

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.down1 = _block(channels, width)
        self.down2 = _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.merge2 = _block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.merge1 = _block(2 * width, width)
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        # Two poolings need sides divisible by 4: pad by repeating the edge, crop the answer back.
        images = nn.functional.pad(images, (0, -width % 4, 0, -height % 4), mode="replicate")
        first = self.down1(images)
        second = self.down2(nn.functional.max_pool2d(first, 2))
        bottom = self.bottom(nn.functional.max_pool2d(second, 2))
        second = self.merge2(torch.cat([self.up2(bottom), second], dim=1))
        first = self.merge1(torch.cat([self.up1(second), first], dim=1))
        return torch.sigmoid(self.out(first))[..., :height, :width]


def invert(model: nn.Module, surrogates: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """The network's guess of each surrogate's plaintext: float ``(N, C, H, W)`` in [0, 1]."""
    model.to(device).eval()
    guesses = []
    with torch.no_grad():
        for start in range(0, len(surrogates), batch_size):
            guesses.append(model(to_unit_float(surrogates[start : start + batch_size], device)).cpu().numpy())
    return np.concatenate(guesses)


def train_inversion(
    surrogates: np.ndarray,
    plain: np.ndarray,
    *,
    epochs: int,
    device: torch.device,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 1e-3,
    after_epoch: Callable[[int, nn.Module], None] | None = None,
) -> InversionNet:
    """Train an :class:`InversionNet` from ``surrogates`` to ``plain``.

    Parameters
    ----------
    surrogates, plain : np.ndarray
        uint8 ``(N, C, H, W)`` pairs, image i of each belonging together.
    epochs : int
        Passes over the pairs (the attacker's budget).
    device : torch.device
        Where to train.
    seed : int
        Seeds the initial weights and the shuffling.
    batch_size, lr : int, float
        Adam's batch size and learning rate.
    after_epoch : callable, optional
        Called with the epoch number (from 1) and the network after each epoch, e.g. to
        score it on the victim's surrogates.

    Raises
    ------
    ValueError
        For mismatched pairs or a budget below 1.
    """
    if surrogates.shape != plain.shape or surrogates.ndim != 4 or not len(plain):
        raise ValueError(
            f"surrogates and plain must be matching (N, C, H, W) sets, got {surrogates.shape} and {plain.shape}"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    torch.manual_seed(seed)
    model = InversionNet(surrogates.shape[1]).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(plain), generator=shuffle).split(batch_size):
            indices = batch.numpy()
            loss = nn.functional.l1_loss(
                model(to_unit_float(surrogates[indices], device)), to_unit_float(plain[indices], device)
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if after_epoch is not None:
            after_epoch(epoch, model)
    return model
