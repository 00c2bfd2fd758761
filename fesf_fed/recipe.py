"""The training recipe: how a site (or the central reference) trains its classifier.

A hospital trains on data nobody tuned the training for: any modality, any number of
classes, often a rare class or two. :class:`Recipe` holds the choices that make plain
training from scratch robust there, each with a default that needs no per-dataset
constant and each switchable on its own (run settings ``class-weighting``, ``augment``,
``optimiser``, ``weight-decay``, ``lr-schedule``, ``warmup-fraction``,
``clip-grad-norm``, and DP-SGD's ``dp-sgd-noise-multiplier``, ``dp-sgd-max-grad-norm``,
``dp-sgd-delta``):

- class-balanced cross-entropy, from the site's own training counts, so the rare class
  is not drowned by the common one (a model answering the majority class is no longer
  the cheapest fit);
- random left-right flips, exact (no resampling), on the device, per batch, so a few
  hundred images are not memorised as easily;
- AdamW with decoupled weight decay, a short linear warm-up and a cosine decay of the
  learning rate over the *whole* run (federated: every round's local epochs), and
  gradient-norm clipping;
- optionally DP-SGD (off by default): each image's gradient clipped and Gaussian noise
  added to their sum (:mod:`fesf_fed.dp_sgd`), a differential-privacy guarantee for the
  site's records against anyone who sees the weights.

:meth:`Recipe.legacy` is the training before recipes existed (Adam at a constant
learning rate, plain cross-entropy, no augmentation, no clipping). This module does not
import Flower: :func:`fesf_fed.task.train` uses it, and so does the central reference.
"""

import math
from dataclasses import dataclass, fields
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

#: ``class-weighting``: "balanced" weighs each class by n / (k * n_c) (scikit-learn's "balanced").
ClassWeighting = Literal["balanced", "none"]
#: ``augment``: "flip" mirrors half the training images left-right, exactly (no resampling);
#: "light" also slightly rotates, shifts and scales each one (bilinear resampling).
Augmentation = Literal["flip", "light", "none"]
#: ``optimiser``: "adamw" (decoupled weight decay) or plain "adam" (no weight decay).
Optimiser = Literal["adamw", "adam"]
#: ``lr-schedule``: "cosine" (warm-up, then cosine decay to zero at the run's end) or "constant".
LrSchedule = Literal["cosine", "constant"]
CLASS_WEIGHTINGS: tuple[str, ...] = get_args(ClassWeighting)
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
OPTIMISERS: tuple[str, ...] = get_args(Optimiser)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)

# "light" augmentation: small enough that no lesion leaves the frame and no anatomy becomes
# implausible, at any image size (the shift is a share of the side, not pixels).
MAX_ROTATION_DEGREES = 10.0
MAX_SHIFT = 0.05  # of the image side
MAX_SCALE_CHANGE = 0.1  # scale in [0.9, 1.1]


@dataclass(frozen=True)
class Recipe:
    """The training choices of :func:`fesf_fed.task.train`; the defaults are the run settings' defaults.

    Attributes
    ----------
    class_weighting : {"balanced", "none"}
        "balanced": cross-entropy weights ``n / (k * n_c)`` from the labels ``train`` is
        given (a site's own training counts; ``k`` the classes present there, a class absent
        there gets weight 0, which no target ever uses). A batch's loss is its weighted sum over
        the batch size, an unbiased estimate of the class-balanced loss. Without it a skewed site
        learns to answer its largest class. "none": plain cross-entropy.
    augment : {"flip", "light", "none"}
        "flip" (the default): half the images, at random, mirrored left-right, exactly. "light":
        also a random affine map per image (rotation within ±10°, shift within 5 % of the side,
        scale 0.9-1.1), resampled bilinearly. Resampling blurs the highest frequencies, where a
        surrogate carries the plaintext's blended amplitude (:mod:`fesf_fed.ihm`): on the demo
        set, x_su' federated balanced accuracy was 0.791 with "light" against 0.883 with "flip"
        and 0.890 with "none" (plaintext: 0.923 and 0.934; docs/benchmarks.md), so "light" suits
        plaintext only. A flip keeps every frequency. Deliberately no colour or intensity jitter:
        grey levels carry the diagnosis in most modalities (density, echogenicity, staining),
        and in a surrogate they carry the plaintext's blended Fourier amplitude, which
        brightness and contrast changes would rewrite. "none": images as stored.
    optimiser : {"adamw", "adam"}
        "adamw": Adam with decoupled weight decay (Loshchilov & Hutter, 2019), the decay
        applied to weight matrices and kernels but not to biases and normalisation scales.
        "adam": plain Adam, no weight decay (``weight_decay`` is ignored).
    weight_decay : float
        AdamW's decoupled weight decay, 1e-4 by default: a mild pull towards small weights
        that helps a net trained from scratch on a few hundred images generalise, too weak to
        underfit at any size seen here.
    lr_schedule : {"cosine", "constant"}
        "cosine": linear warm-up over the first ``warmup_fraction`` of the run, then cosine
        decay to zero at the run's last step; a late small learning rate settles the model
        (and, federated, lets the sites' updates agree) instead of leaving it bouncing at the
        initial rate. "constant": the learning rate throughout, no warm-up.
    warmup_fraction : float
        Share of the whole run's epochs spent warming up (0.05; 0 = none). A share, not a
        count, so a 10-epoch and a 100-epoch run both warm up briefly; warming up keeps
        Adam's first, badly estimated steps from throwing a fresh net into a poor region.
    clip_grad_norm : float
        Clip the gradients' global L2 norm to this value (5.0; 0 = off). Only the rare
        outsized step is cut: with class weights a batch of rare images can give one.
        Not applied with DP-SGD, whose per-image clipping bounds every step.
    dp_sgd_noise_multiplier : float
        DP-SGD's noise: the standard deviation of the Gaussian noise added to a batch's summed
        clipped gradients, in units of ``dp_sgd_max_grad_norm`` (0, the default: no DP-SGD).
        With it, batches are Poisson-sampled and :func:`fesf_fed.task.train` reports the
        privacy spent to an accountant (:mod:`fesf_fed.dp_sgd`). It needs ``class_weighting``
        "none": balanced weights come from the site's class counts, so each image's loss would
        depend on the other images' labels, which the per-image guarantee does not cover.
    dp_sgd_max_grad_norm : float
        DP-SGD's per-image clipping norm (1.0): each image's gradient is scaled down to at most
        this L2 norm, which bounds what one image can change.
    dp_sgd_delta : float
        The delta at which the privacy spent is reported as epsilon (1e-5); keep it well
        below one over a site's training images.
    """

    class_weighting: ClassWeighting = "balanced"
    augment: Augmentation = "flip"
    optimiser: Optimiser = "adamw"
    weight_decay: float = 1e-4
    lr_schedule: LrSchedule = "cosine"
    warmup_fraction: float = 0.05
    clip_grad_norm: float = 5.0
    dp_sgd_noise_multiplier: float = 0.0
    dp_sgd_max_grad_norm: float = 1.0
    dp_sgd_delta: float = 1e-5

    def __post_init__(self) -> None:
        for name, allowed in (
            ("class_weighting", CLASS_WEIGHTINGS),
            ("augment", AUGMENTATIONS),
            ("optimiser", OPTIMISERS),
            ("lr_schedule", LR_SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"recipe {name}: choose one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0 or not self.clip_grad_norm >= 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError(
                "recipe: weight_decay and clip_grad_norm must be >= 0 and warmup_fraction in [0, 1), got "
                f"{self.weight_decay}, {self.clip_grad_norm}, {self.warmup_fraction}"
            )
        if not self.dp_sgd_noise_multiplier >= 0 or not self.dp_sgd_max_grad_norm > 0 or not 0 < self.dp_sgd_delta < 1:
            raise ValueError(
                "recipe: dp_sgd_noise_multiplier must be >= 0, dp_sgd_max_grad_norm > 0 and dp_sgd_delta in (0, 1), "
                f"got {self.dp_sgd_noise_multiplier}, {self.dp_sgd_max_grad_norm}, {self.dp_sgd_delta}"
            )
        if self.dp_sgd and self.class_weighting == "balanced":
            raise ValueError(
                "class-weighting: 'balanced' weighs each image by its site's class counts, which DP-SGD's per-image "
                'guarantee does not cover; set class-weighting = "none" to train with dp-sgd-noise-multiplier > 0'
            )

    @property
    def dp_sgd(self) -> bool:
        """Whether training is DP-SGD: a noise multiplier above 0."""
        return self.dp_sgd_noise_multiplier > 0

    @classmethod
    def legacy(cls) -> "Recipe":
        """The training before recipes: Adam at a constant rate, plain cross-entropy, no augmentation or clipping."""
        return cls(
            class_weighting="none",
            augment="none",
            optimiser="adam",
            weight_decay=0.0,
            lr_schedule="constant",
            warmup_fraction=0.0,
            clip_grad_norm=0.0,
        )

    def changes_from(self, other: "Recipe") -> dict[str, object]:
        """The settings whose values differ from ``other``'s, by run-config key (``class-weighting``), in field order."""
        return {
            field.name.replace("_", "-"): getattr(self, field.name)
            for field in fields(self)
            if getattr(self, field.name) != getattr(other, field.name)
        }

    def learning_rate(self, base: float, position: float, total: float) -> float:
        """The learning rate at ``position`` epochs into a run of ``total`` epochs.

        Parameters
        ----------
        base : float
            The run's learning rate (``learning-rate``): the peak, reached at the end of warm-up.
        position : float
            Epochs since the run began, fractional within an epoch (``train`` passes the
            middle of each step, so no step has a rate of exactly 0).
        total : float
            The run's epochs (federated: rounds times local epochs).
        """
        if self.lr_schedule == "constant":
            return base
        warmup = self.warmup_fraction * total
        if position < warmup:
            return base * position / warmup
        progress = min(max((position - warmup) / max(total - warmup, 1e-12), 0.0), 1.0)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Balanced cross-entropy weights ``n / (k * n_c)``, float32 ``(num_classes,)``; 0 for absent classes.

    ``k`` counts the classes present in ``labels``, so the weights average to 1 over the
    images, as scikit-learn's ``compute_class_weight("balanced", ...)`` does.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1}, but the model has {num_classes} classes")
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


def augment_batch(images: torch.Tensor, augment: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """A batch of float ``(N, C, H, W)`` images augmented as ``augment`` says, on their device.

    Parameters
    ----------
    images : torch.Tensor
        Float images in [0, 1], on any device.
    augment : {"flip", "light", "none"}
        "none" returns ``images`` itself.
    generator : torch.Generator
        A CPU generator for the random maps (drawn on the CPU, a few numbers per image),
        so training stays reproducible for a seed on any device.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device, values still in [0, 1].
    """
    if augment == "none":
        return images
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment: choose one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    count = len(images)
    if augment == "flip":
        mirrored = (torch.rand(count, generator=generator) < 0.5).to(images.device)
        return torch.where(mirrored[:, None, None, None], images.flip(-1), images)

    def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1)
        return torch.rand(*shape, generator=generator) * 2 - 1

    mirror = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    angle = uniform(count) * math.radians(MAX_ROTATION_DEGREES)
    scale = 1 + uniform(count) * MAX_SCALE_CHANGE
    shift = uniform(count, 2) * 2 * MAX_SHIFT  # affine_grid's coordinates span [-1, 1]: a side is 2
    # affine_grid maps each output pixel to where it samples the input: x_in = R(angle) / scale @ (mirror * x_out) + shift.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin, shift[:, 0]], 1), torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1
    ).to(images.device, images.dtype)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    # Reflection, not zeros: the test images have no black corners for the model to learn to ignore.
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def build_optimiser(model: nn.Module, lr: float, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser for ``model``'s parameters at learning rate ``lr``.

    AdamW decays only tensors of two or more dimensions: decaying biases and
    normalisation scales only shrinks them towards a value that has no meaning.
    """
    if recipe.optimiser == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    decayed = [parameter for parameter in model.parameters() if parameter.ndim > 1]
    kept = [parameter for parameter in model.parameters() if parameter.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": recipe.weight_decay}, {"params": kept, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)
