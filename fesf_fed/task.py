"""Training and evaluation of a diagnostic classifier on a site's (surrogate) images.

The task module of Flower's PyTorch examples, without Flower: the ClientApp calls
:func:`train` and :func:`evaluate` on its surrogates, the ServerApp calls
:func:`evaluate` for central evaluation. Images arrive as the cache stores them,
uint8 ``(N, C, H, W)``, and move to the device one batch at a time.
"""

import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fesf_fed.dp_sgd import PrivateSteps, private_training
from fesf_fed.pixels import to_unit_float
from fesf_fed.recipe import Recipe, augment_batch, build_optimiser, class_weights

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant

#: The training :func:`train` does unless told otherwise: the run settings' defaults.
DEFAULT_RECIPE = Recipe()


@dataclass(frozen=True)
class Evaluation:
    """Classification figures on one set of images; precision, recall and F1 are macro averages.

    ``auroc`` is the macro one-vs-rest AUROC of the softmax probabilities (:func:`macro_auroc`);
    None when fewer than two classes occur in the set, where no AUROC is defined.
    """

    loss: float
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float
    auroc: float | None
    confusion: list[list[int]]
    examples: int

    def scalars(self) -> dict[str, float]:
        """The figures without the confusion matrix: what may be sent as metrics.

        Keys are hyphenated (``balanced-accuracy``), as every metric that Flower carries and
        the run store keeps is named. An absent AUROC (None) is left out: neither Flower's
        MetricRecord nor the run store holds a None, and a NaN would spoil every mean it entered.
        """
        return {
            name.replace("_", "-"): value
            for name, value in asdict(self).items()
            if name != "confusion" and value is not None
        }


def _check_set(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    if not len(images):
        raise ValueError("no images to train or evaluate on")


def train(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    proximal_mu: float = 0.0,
    recipe: Recipe = DEFAULT_RECIPE,
    first_epoch: int = 0,
    total_epochs: int | None = None,
    lr_trace: list[float] | None = None,
    after_epoch: Callable[[int], None] | None = None,
    accountant: "RDPAccountant | None" = None,
) -> float:
    """Train ``model`` in place as ``recipe`` says; return the mean loss of the last epoch.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier; it is moved to ``device``.
    images, labels : np.ndarray
        uint8 ``(N, C, H, W)`` and int ``(N,)``.
    epochs, lr, batch_size : int, float, int
        Local training schedule.
    device : torch.device
        Where to train.
    seed : int
        Seeds the shuffling and the augmentation, so a round is reproducible.
    proximal_mu : float
        FedProx's proximal term (Li et al., 2020): adds ``mu / 2 * ||w - w_start||^2``
        to the loss, which keeps a site's update near the global model it started from.
    recipe : Recipe
        Class weighting, augmentation, optimiser, learning-rate schedule, clipping and DP-SGD
        (:class:`fesf_fed.recipe.Recipe`; its defaults unless given, ``Recipe.legacy()`` for
        Adam at a constant rate on plain cross-entropy). Class weights come from ``labels``.
        With DP-SGD each epoch is ``ceil(N / batch_size)`` steps on Poisson-sampled batches
        (:mod:`fesf_fed.dp_sgd`) instead of a shuffled pass, and ``seed`` no longer fixes them.
    first_epoch, total_epochs : int, int or None
        Where these ``epochs`` lie in the whole run, for the learning-rate schedule: a
        federated round ``r`` (from 1) of ``E`` local epochs in ``R`` rounds starts at
        ``(r - 1) * E`` of ``R * E``. By default the run is this call: 0 of ``epochs``.
    lr_trace : list of float, optional
        When given, the learning rate of every step is appended to it.
    after_epoch : callable, optional
        Called after each epoch with the number of epochs done in the whole run (from 1), e.g.
        to validate the model; training goes on in training mode afterwards.
    accountant : opacus.accountants.RDPAccountant, optional
        Required with DP-SGD: every private step is added to it
        (:func:`fesf_fed.dp_sgd.new_accountant`, or the one a site keeps across rounds).
    """
    _check_set(images, labels)
    total_epochs = epochs if total_epochs is None else total_epochs
    if epochs < 1 or batch_size < 1 or lr <= 0 or proximal_mu < 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1, lr > 0 and proximal_mu >= 0, "
            f"got {epochs}, {batch_size}, {lr}, {proximal_mu}"
        )
    if first_epoch < 0 or first_epoch + epochs > total_epochs:
        raise ValueError(
            f"epochs {first_epoch} to {first_epoch + epochs} do not lie in a run of total_epochs {total_epochs}"
        )
    if recipe.dp_sgd and (accountant is None or proximal_mu):
        # Opacus noises the per-image gradients only: a proximal term's gradient would be dropped.
        raise ValueError("DP-SGD needs an accountant for its steps and takes no proximal term (proximal_mu 0)")
    model.to(device).train()
    global_weights = [parameter.detach().clone() for parameter in model.parameters()]
    optimiser = build_optimiser(model, lr, recipe)
    targets = torch.as_tensor(labels, dtype=torch.long)
    shuffle = torch.Generator().manual_seed(seed)
    # Its own generator, so switching augmentation on or off leaves the shuffling as it was.
    augmentation = torch.Generator().manual_seed(seed + 1)
    weights: torch.Tensor | None = None
    steps = -(-len(images) // batch_size)
    epoch_loss = 0.0
    with ExitStack() as stack:  # with DP-SGD, the model is a plain module again however training ends
        private: PrivateSteps | None = None
        if recipe.dp_sgd:
            private = stack.enter_context(
                private_training(model, optimiser, recipe, batch_size, len(images), accountant)
            )
        step_optimiser = optimiser if private is None else private.optimiser
        for epoch in range(first_epoch, first_epoch + epochs):
            if private is None:
                batches = list(torch.randperm(len(images), generator=shuffle).split(batch_size))
            else:
                batches = [private.batch(len(images)) for _ in range(steps)]
            total, seen = 0.0, 0
            for step, batch in enumerate(batches):
                rate = recipe.learning_rate(lr, epoch + (step + 0.5) / steps, total_epochs)
                for group in optimiser.param_groups:
                    group["lr"] = rate
                if lr_trace is not None:
                    lr_trace.append(rate)
                inputs = augment_batch(to_unit_float(images[batch.numpy()], device), recipe.augment, augmentation)
                logits = model(inputs)
                if weights is None and recipe.class_weighting == "balanced":
                    weights = class_weights(labels, logits.shape[1]).to(device)
                if weights is None and private is None:
                    loss = nn.functional.cross_entropy(logits, targets[batch].to(device))
                else:
                    # Divided by the batch size, not by the batch's summed weights (cross_entropy's "mean"): the
                    # weights average 1 over the set, so this is an unbiased estimate of the class-balanced loss.
                    # The "mean" would give a batch without a rare image (most, at batch size 8 on a skewed site)
                    # the full pull towards the common classes, and dilute the balancing. A Poisson batch of
                    # DP-SGD may be empty: its loss is 0, and its step adds the noise all the same.
                    summed = nn.functional.cross_entropy(
                        logits, targets[batch].to(device), weight=weights, reduction="sum"
                    )
                    loss = summed / max(len(batch), 1)
                if proximal_mu:
                    distance = sum(((now - then) ** 2).sum() for now, then in zip(model.parameters(), global_weights))
                    loss = loss + proximal_mu / 2 * distance
                step_optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.clip_grad_norm and private is None:  # DP-SGD clips each image's gradient instead
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
                step_optimiser.step()
                total += loss.item() * len(batch)
                seen += len(batch)
            epoch_loss = total / max(seen, 1)
            if after_epoch is not None:
                after_epoch(epoch + 1)
                model.train()
    return epoch_loss


def classification_figures(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro precision, recall and F1 from a confusion matrix (rows: true class).

    A class that is never predicted has precision 0; one that never occurs has recall 0.
    Balanced accuracy is scikit-learn's: the mean recall over the classes that occur, so a
    class absent from the true labels is left out rather than counted as recall 0. Unlike
    accuracy, it does not reward answering the largest class: a model that answers one
    class for every image scores ``1 / k`` with ``k`` classes present.
    """
    true_positive = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(true_positive), where=both > 0)
    return {
        "accuracy": float(true_positive.sum() / max(confusion.sum(), 1)),
        "balanced_accuracy": float(recall[actual > 0].mean()) if actual.any() else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
    }


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro one-vs-rest AUROC of class probabilities, by scikit-learn's ``roc_auc_score``; None where undefined.

    Two classes: the AUROC of the second class's (label 1's) probability. More: each class's
    one-vs-rest AUROC (``multi_class="ovr"`` with ``labels=range(k)``), averaged over the
    classes that occur. With every class present that is scikit-learn's ``average="macro"``;
    a class absent from ``labels`` has no AUROC of its own (scikit-learn's macro average would
    be NaN), so it is left out, as balanced accuracy leaves it out.

    Parameters
    ----------
    labels : np.ndarray
        int ``(N,)``, the true classes.
    probabilities : np.ndarray
        float ``(N, k)``, each row a probability distribution over the ``k`` classes (softmax).

    Returns
    -------
    float or None
        From 0 (every ranking inverted) over 0.5 (no better than chance) to 1 (perfect);
        None when fewer than two classes occur in ``labels``: nothing to rank against.
    """
    # Imported here: scikit-learn takes a while to import, and most users of this module never score.
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(labels) or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must be ({len(labels)}, k >= 2), got {probabilities.shape}")
    if not np.isfinite(probabilities).all():  # a diverged model: it scores badly elsewhere, and has no ranking
        return None
    present = np.unique(labels)
    if len(present) < 2:
        return None
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    classes = range(probabilities.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # an absent class's NaN, left out below
        per_class = roc_auc_score(labels, probabilities, multi_class="ovr", average=None, labels=classes)
    return float(np.mean(per_class[present]))


def one_class_answer(confusion: np.ndarray | Sequence[Sequence[int]]) -> int | None:
    """The class that a one-class model answers for every image, or None when the model is not one-class.

    A confusion matrix (rows: true class, columns: predicted class) is one-class when every
    prediction falls in one column while more than one true class occurs: the model ignores
    its input, and its accuracy is merely that class's share of the images.

    Parameters
    ----------
    confusion : array-like of int, shape (k, k)
        The counts, as :func:`evaluate` or the run store give them.

    Returns
    -------
    int or None
        The index of the one predicted class, or None.
    """
    counts = np.asarray(confusion)
    predicted = np.flatnonzero(counts.sum(axis=0))
    if len(predicted) == 1 and np.count_nonzero(counts.sum(axis=1)) > 1:
        return int(predicted[0])
    return None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> Evaluation:
    """Loss, accuracy, balanced accuracy, macro precision/recall/F1, macro AUROC and the confusion matrix of ``model``.

    The softmax probabilities are kept batch by batch for the AUROC (:func:`macro_auroc`),
    which is None when the set holds fewer than two classes.
    """
    _check_set(images, labels)
    model.to(device).eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    probabilities = np.empty((len(images), num_classes), dtype=np.float64)
    total_loss = 0.0
    for start in range(0, len(images), batch_size):
        logits = model(to_unit_float(images[start : start + batch_size], device))
        targets = torch.as_tensor(labels[start : start + batch_size], dtype=torch.long, device=device)
        total_loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        np.add.at(confusion, (targets.cpu().numpy(), logits.argmax(1).cpu().numpy()), 1)
        # In float64 (on the CPU: not every device has it), so each row sums to 1 as closely as scikit-learn checks.
        probabilities[start : start + len(logits)] = torch.softmax(logits.cpu().double(), dim=1).numpy()
    return Evaluation(
        loss=total_loss / len(images),
        auroc=macro_auroc(labels, probabilities),
        confusion=confusion.tolist(),
        examples=len(images),
        **classification_figures(confusion),
    )
