"""Gradient inversion: the images an honest-but-curious server recovers from a site's update.

A site never sends images, but its update is a function of them. With FedSGD the update
is one gradient of the loss on a batch; a FedAvg update of ``lr`` over several local
steps approximates ``-lr`` times the sum of such gradients, so the server holds (a
multiple of) a gradient whatever the protocol. :func:`invert_gradients` is "Inverting
Gradients" (Geiping, Bauermeister, Dröge & Moeller 2020, NeurIPS, arXiv:2003.14053):
optimise dummy images until the gradient they produce points the same way as the
observed one,

    minimise  1 - cos(grad L(x'), g)  +  tv_weight * TV(x'),   x' in [0, 1],

with the cosine over all parameters flattened and concatenated (the gradient's
direction carries the image; its size depends on the loss and the learning rate),
Adam on the *signed* gradient of that objective, the learning rate cut tenfold at 3/8,
5/8 and 7/8 of the iterations, and a box constraint applied by clamping to [0, 1]
after every step (the paper code's ``boxed`` option), as in the authors' code
(github.com/JonasGeiping/invertinggradients). Labels are taken as known: for a batch
of one they can be read off the last layer's gradient exactly (iDLG, Zhao, Mopuri &
Bilen 2020, arXiv:2001.02610), for larger batches of distinct labels nearly always
(Yin et al. 2021, "See through Gradients", CVPR): :func:`infer_labels`.

Cost: every iteration is a forward pass, a backward pass with ``create_graph`` and a
backward pass through that. For an untrained ``smallcnn`` and one grey image, on one CPU
thread, an iteration took 11.5 ms at 64 px (about 6 s for the default 500 iterations)
and 4.3 ms at 16 px, measured on a busy two-core machine, so an upper bound.

What a pixel-aligned comparison misses: ``smallcnn`` is convolutional up to a global
average pool, so a shifted image gives nearly the same gradient (a kernel's gradient is
a sum over positions; only the zero-padded borders and the pooling grid break the
symmetry). At 16 px the borders pin a reconstruction in place; at 64 px a bright
rectangle came back recognisable but shifted (SSIM about 0.5 to the true image). SSIM
or MSE against the true image is then a lower bound on what leaks.

The model is used in the mode it is in and is left unchanged (its parameters' ``.grad``
included). A site trains in training mode (:func:`fesf_fed.task.train`); for models
normalised with GroupNorm (``smallcnn``) training and evaluation modes compute the same
function. A BatchNorm model in training mode normalises with the batch's statistics, as
the site did, but also updates its running statistics on every forward pass here.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a site's update changes: those that require a gradient, in ``parameters()`` order."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError("the model has no parameters that require a gradient")
    return parameters


def _check_labels(labels: torch.Tensor, batch_size: int) -> None:
    if labels.shape != (batch_size,) or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integer ({batch_size},), got {labels.dtype} {tuple(labels.shape)}")


def site_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy on one batch: what a site's one-step (FedSGD) update reveals.

    Parameters
    ----------
    model : torch.nn.Module
        The global model the site starts from, in the mode it trains in (see the module notes).
    images : torch.Tensor
        Float ``(B, C, H, W)`` in [0, 1], e.g. from :func:`fesf_fed.pixels.to_unit_float`.
    labels : torch.Tensor
        Integer ``(B,)``.

    Returns
    -------
    list of torch.Tensor
        One detached gradient per parameter that requires a gradient, in ``model.parameters()``
        order, on the model's device. The model's own ``.grad`` is left untouched.

    Raises
    ------
    ValueError
        If the images are not a float ``(B, C, H, W)`` batch or the labels do not match it.
    """
    if images.ndim != 4 or not images.dtype.is_floating_point or not len(images):
        raise ValueError(
            f"images must be a non-empty float (B, C, H, W) batch, got {images.dtype} {tuple(images.shape)}"
        )
    _check_labels(labels, len(images))
    parameters = _trainable(model)
    device = parameters[0].device
    loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
    return [gradient.detach() for gradient in torch.autograd.grad(loss, parameters)]


def infer_labels(gradient: Sequence[torch.Tensor], num_classes: int, batch_size: int) -> torch.Tensor:
    """Read a batch's labels off the classifier head's gradient (iDLG; Yin et al. 2021 for batches).

    For cross-entropy the gradient with respect to the logits is ``softmax - onehot``, negative
    only at the true class. So the head's bias gradient (its mean over the batch) is negative
    for exactly the labels present, given small enough probabilities there; the weight
    gradient's rows inherit the sign when the head's inputs are non-negative (after a ReLU,
    as in every model of :mod:`fesf_fed.models`).

    Parameters
    ----------
    gradient : sequence of torch.Tensor
        A site's gradient, as :func:`site_gradient` gives it; its last entry must be the
        classifier head's bias ``(num_classes,)`` or, for a head without bias, its weight
        ``(num_classes, features)``.
    num_classes : int
        Number of the model's output logits.
    batch_size : int
        Number of images behind the gradient.

    Returns
    -------
    torch.Tensor
        int64 ``(batch_size,)``, the ``batch_size`` classes with the most negative head
        gradient, most negative first. Exact for a batch of one; a batch with repeated labels
        gets distinct ones, so at least one is wrong.

    Raises
    ------
    ValueError
        If the last gradient is not a head's, or ``batch_size`` is not in 1 to ``num_classes``.
    """
    if not 1 <= batch_size <= num_classes:
        raise ValueError(f"batch_size must be in 1 to num_classes ({num_classes}), got {batch_size}")
    head = gradient[-1] if len(gradient) else torch.empty(0)
    if head.ndim == 1 and head.shape == (num_classes,):
        scores = head
    elif head.ndim == 2 and head.shape[0] == num_classes:
        scores = head.sum(dim=1)
    else:
        raise ValueError(
            f"the last gradient must be the classifier head's bias ({num_classes},) or weight "
            f"({num_classes}, features), got {tuple(head.shape)}"
        )
    return torch.argsort(scores.detach().cpu())[:batch_size].to(torch.int64)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: the mean absolute difference of vertical plus of horizontal neighbours.

    The image prior of Geiping et al.'s code: it favours piecewise-smooth images over noise,
    which the gradient alone does not rule out.
    """
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return vertical + horizontal


def _objective(
    model: nn.Module,
    parameters: list[nn.Parameter],
    dummy: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor,
    tv_weight: float,
    create_graph: bool,
) -> torch.Tensor:
    """The attack's objective for ``dummy``; ``target`` is the observed gradient, flattened and concatenated."""
    loss = nn.functional.cross_entropy(model(dummy), labels)
    gradient = torch.cat([part.flatten() for part in torch.autograd.grad(loss, parameters, create_graph=create_graph)])
    # The tiny constant keeps a zero gradient (a perfectly fitted dummy) from dividing by zero.
    cosine = gradient @ target / (gradient.norm() * target.norm() + 1e-12)
    return 1 - cosine + tv_weight * total_variation(dummy)


def invert_gradients(
    model: nn.Module,
    gradient: Sequence[torch.Tensor],
    labels: torch.Tensor,
    shape: Sequence[int],
    *,
    iterations: int = 500,
    lr: float = 0.1,
    tv_weight: float = 0.05,
    restarts: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Reconstruct the images behind a gradient ("Inverting Gradients", Geiping et al. 2020).

    Parameters
    ----------
    model : torch.nn.Module
        The model the gradient was taken on, with the same weights and in the same mode.
    gradient : sequence of torch.Tensor
        One tensor per parameter that requires a gradient, in ``model.parameters()`` order, as
        :func:`site_gradient` gives it. Any positive multiple (a FedSGD update ``-lr * g``
        negated, or a sum over steps) gives the same reconstruction: only its direction counts.
    labels : torch.Tensor
        Integer ``(B,)``, the batch's labels, taken as known (:func:`infer_labels` reads them
        off the gradient).
    shape : sequence of int
        ``(B, C, H, W)`` of the batch to reconstruct.
    iterations : int
        Optimisation steps per restart. For an untrained ``smallcnn`` and one image the SSIM to
        the true image stopped rising after about 400 at 16 px and 600 at 64 px; the paper ran
        24,000 for ImageNet-sized ResNets.
    lr : float
        Adam's initial learning rate, in units of the [0, 1] pixel range (signed gradients make
        every early step move a pixel by about this much).
    tv_weight : float
        Weight of the total-variation prior, against a cosine term in [0, 2]. On a bright
        rectangle 0.05 did better than 0.01 and as well as 0.2 at 16 px, and better than 0.2
        at 64 px. A strong prior favours flat regions, which flatters cartoon images more than
        textured ones.
    restarts : int
        Independent starts from different noise; the one with the lowest final objective wins.
    seed : int
        Restart ``r`` starts from Gaussian noise around mid-grey drawn with seed ``seed + r``.

    Returns
    -------
    torch.Tensor
        Float ``(B, C, H, W)`` in [0, 1], detached, on the model's device.

    Raises
    ------
    ValueError
        If ``shape`` is not four positive sizes, the labels do not match it, the gradient does
        not match the model's parameters or is not finite, or ``iterations``, ``restarts``,
        ``lr`` or ``tv_weight`` are out of range.
    """
    shape = tuple(int(size) for size in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be four positive sizes (B, C, H, W), got {shape}")
    if iterations < 1 or restarts < 1:
        raise ValueError(f"iterations and restarts must be >= 1, got {iterations} and {restarts}")
    if not lr > 0 or not tv_weight >= 0:
        raise ValueError(f"lr must be > 0 and tv_weight >= 0, got {lr} and {tv_weight}")
    _check_labels(labels, shape[0])
    parameters = _trainable(model)
    expected = [tuple(parameter.shape) for parameter in parameters]
    given = [tuple(part.shape) for part in gradient]
    if given != expected:
        raise ValueError(f"gradient shapes {given} do not match the model's trainable parameters {expected}")
    if not all(torch.isfinite(part).all() for part in gradient):
        raise ValueError("gradient has non-finite entries")
    device = parameters[0].device
    target = torch.cat([part.detach().to(device=device, dtype=parameters[0].dtype).flatten() for part in gradient])
    labels = labels.to(device)
    # The paper code's schedule: MultiStepLR at iterations // 2.667, // 1.6 and // 1.142.
    milestones = [iterations * 3 // 8, iterations * 5 // 8, iterations * 7 // 8]

    best: torch.Tensor | None = None
    best_loss = math.inf
    for restart in range(restarts):
        # The paper code's torch.randn in normalised pixels, i.e. around the data's mean with its
        # spread; here 0.5 + 0.25 * N(0, 1), boxed. Mid-grey noise converged better than uniform
        # noise in [0, 1] for smallcnn at 64 px (SSIM 0.50 against 0.28 after 1,000 iterations).
        noise = 0.5 + 0.25 * torch.randn(shape, generator=torch.Generator().manual_seed(seed + restart))
        dummy = noise.clamp_(0.0, 1.0).to(device).requires_grad_(True)
        optimiser = torch.optim.Adam([dummy], lr=lr)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=0.1)
        for _ in range(iterations):
            objective = _objective(model, parameters, dummy, labels, target, tv_weight, True)
            # autograd.grad rather than backward(): backward() would also fill the model's .grad.
            (step,) = torch.autograd.grad(objective, dummy)
            # Signed gradients, as in the paper: the objective's gradient spans orders of magnitude
            # across pixels and iterations; its sign alone gives Adam steps of a steady size.
            dummy.grad = step.sign()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                dummy.clamp_(0.0, 1.0)
        final = _objective(model, parameters, dummy, labels, target, tv_weight, False).item()
        # A non-finite final objective counts as infinite: it never wins, and a later finite one beats it.
        final = final if math.isfinite(final) else math.inf
        if best is None or final < best_loss:
            best, best_loss = dummy.detach(), final
    assert best is not None  # restarts >= 1
    return best
