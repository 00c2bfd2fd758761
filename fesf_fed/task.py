"""Training and evaluation of a diagnostic classifier on a site's (surrogate) images.

The task module of Flower's PyTorch examples, without Flower: the ClientApp calls
:func:`train` and :func:`evaluate` on its surrogates, the ServerApp calls
:func:`evaluate` for central evaluation. Images arrive as the cache stores them,
uint8 ``(N, C, H, W)``, and move to the device one batch at a time.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fesf_fed.pixels import to_unit_float


@dataclass(frozen=True)
class Evaluation:
    """Classification figures on one set of images; precision, recall and F1 are macro averages."""

    loss: float
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: list[list[int]]
    examples: int

    def scalars(self) -> dict[str, float]:
        """The figures without the confusion matrix: what may be sent as metrics.

        Keys are hyphenated (``balanced-accuracy``), as every metric that Flower carries and
        the run store keeps is named.
        """
        return {name.replace("_", "-"): value for name, value in asdict(self).items() if name != "confusion"}


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
) -> float:
    """Train ``model`` in place with Adam and cross-entropy; return the mean loss of the last epoch.

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
        Seeds the shuffling, so a round is reproducible.
    proximal_mu : float
        FedProx's proximal term (Li et al., 2020): adds ``mu / 2 * ||w - w_start||^2``
        to the loss, which keeps a site's update near the global model it started from.
    """
    _check_set(images, labels)
    if epochs < 1 or batch_size < 1 or lr <= 0 or proximal_mu < 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1, lr > 0 and proximal_mu >= 0, "
            f"got {epochs}, {batch_size}, {lr}, {proximal_mu}"
        )
    model.to(device).train()
    global_weights = [parameter.detach().clone() for parameter in model.parameters()]
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    targets = torch.as_tensor(labels, dtype=torch.long)
    shuffle = torch.Generator().manual_seed(seed)
    epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=shuffle)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(
                model(to_unit_float(images[batch.numpy()], device)),
                targets[batch].to(device),
            )
            if proximal_mu:
                distance = sum(((now - then) ** 2).sum() for now, then in zip(model.parameters(), global_weights))
                loss = loss + proximal_mu / 2 * distance
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        epoch_loss = total / len(order)
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
    """Loss, accuracy, balanced accuracy, macro precision/recall/F1 and the confusion matrix of ``model`` on a set."""
    _check_set(images, labels)
    model.to(device).eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    total_loss = 0.0
    for start in range(0, len(images), batch_size):
        logits = model(to_unit_float(images[start : start + batch_size], device))
        targets = torch.as_tensor(labels[start : start + batch_size], dtype=torch.long, device=device)
        total_loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        np.add.at(confusion, (targets.cpu().numpy(), logits.argmax(1).cpu().numpy()), 1)
    return Evaluation(
        loss=total_loss / len(images),
        confusion=confusion.tolist(),
        examples=len(images),
        **classification_figures(confusion),
    )
