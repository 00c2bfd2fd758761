"""Membership inference: can an attacker tell a classifier's training images from others?

A model that fits its training images better than unseen ones leaks which images it saw.
Two black-box attacks, each scored by the ROC AUC of telling members (1) from non-members
(0): 0.5 is chance, 1 a perfect attack.

- :func:`loss_threshold_auc`: the loss-threshold attack of Yeom, Giacomelli, Fredrikson &
  Jha 2018 ("Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting",
  IEEE CSF, arXiv:1709.01604): the lower an image's loss, the likelier a member. Its AUC
  ranks with every threshold at once, so the attacker needs no calibration data.
- :func:`shadow_attack_auc`: the shadow-model attack of Shokri, Stronati, Song &
  Shmatikov 2017 ("Membership Inference Attacks against Machine Learning Models", IEEE
  S&P, arXiv:1610.05820) with one shadow model, which the caller trains like the target on
  the attacker's own data: an attack classifier learns members from non-members on the
  shadow model's outputs, where the attacker knows the answer, and is applied to the
  target's. Unlike Shokri et al., one shadow model and one attack model for every class,
  on the three largest probabilities, sorted, which Salem et al. 2019 ("ML-Leaks", NDSS,
  arXiv:1806.01246) found enough; the attacker also knows each image's label, so the
  loss and the true class's probability are features too.

Models are evaluated in evaluation mode, without gradients, and left in that mode, as
:func:`fesf_fed.task.evaluate` does.
"""

import numpy as np
import torch
from torch import nn

from fesf_fed.pixels import to_unit_float

#: A set of labelled images: uint8 ``(N, C, H, W)`` and integer ``(N,)``.
LabelledImages = tuple[np.ndarray, np.ndarray]


def _check_set(name: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8 or not len(images):
        raise ValueError(f"{name}: images must be non-empty uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integer ({len(images)},), got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {labels.min()}")


def _model_device(model: nn.Module, device: torch.device | None) -> torch.device:
    if device is not None:
        return device
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _outputs(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device | None
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, k)`` and cross-entropy losses ``(N,)``, in float64."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model, device)
    model.to(device).eval()
    probabilities, losses = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            # In float64 on the CPU (not every device has float64): a memorised image's loss is tiny, and
            # computed from the logits, not log(softmax), it does not round to 0, so members stay ranked.
            logits = model(to_unit_float(images[start : start + batch_size], device)).cpu().double()
            batch_labels = labels[start : start + batch_size]
            if batch_labels.max() >= logits.shape[1]:
                raise ValueError(f"labels must be below the model's {logits.shape[1]} classes")
            targets = torch.as_tensor(batch_labels, dtype=torch.long)
            losses.append(nn.functional.cross_entropy(logits, targets, reduction="none").numpy())
            probabilities.append(logits.softmax(dim=1).numpy())
    return np.concatenate(probabilities), np.concatenate(losses)


def per_example_losses(
    model: nn.Module,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> np.ndarray:
    """The cross-entropy loss of each image under ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier; it is moved to ``device`` and left in evaluation mode.
    images_uint8 : np.ndarray
        uint8 ``(N, C, H, W)``, as the cache stores them.
    labels : np.ndarray
        Integer ``(N,)``, each below the model's number of classes.
    batch_size : int
        Images per forward pass.
    device : torch.device, optional
        Where to evaluate; by default where the model's parameters are.

    Returns
    -------
    np.ndarray
        float64 ``(N,)``, each ``>= 0``.

    Raises
    ------
    ValueError
        If the images or labels are malformed or ``batch_size < 1``.
    """
    _check_set("images", images_uint8, labels)
    return _outputs(model, images_uint8, labels, batch_size, device)[1]


def _auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    # Imported here: scikit-learn takes a while to import, and most users of this package never score.
    from sklearn.metrics import roc_auc_score

    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    return float(roc_auc_score(truth, np.concatenate([member_scores, nonmember_scores])))


def loss_threshold_auc(
    model: nn.Module,
    members: LabelledImages,
    nonmembers: LabelledImages,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> float:
    """AUC of the loss-threshold attack (Yeom et al. 2018): score = -loss, members = 1.

    Parameters
    ----------
    model : torch.nn.Module
        The target classifier.
    members, nonmembers : tuple of np.ndarray
        ``(images, labels)``: uint8 ``(N, C, H, W)`` and integer ``(N,)``; the images the model
        was trained on, and images from the same distribution that it was not. The counts may
        differ: the AUC does not depend on the share of members.
    batch_size : int
        Images per forward pass.
    device : torch.device, optional
        Where to evaluate; by default where the model's parameters are.

    Returns
    -------
    float
        The ROC AUC, 0.5 for a model that fits members no better than non-members.

    Raises
    ------
    ValueError
        If a set is malformed or ``batch_size < 1``.
    """
    _check_set("members", *members)
    _check_set("nonmembers", *nonmembers)
    member_losses = _outputs(model, *members, batch_size, device)[1]
    nonmember_losses = _outputs(model, *nonmembers, batch_size, device)[1]
    return _auc(-member_losses, -nonmember_losses)


def _features(probabilities: np.ndarray, losses: np.ndarray, labels: np.ndarray, top: int) -> np.ndarray:
    """Per image: the ``top`` largest softmax probabilities (descending), the loss, the true class's probability."""
    ranked = -np.sort(-probabilities, axis=1)[:, :top]
    true_class = probabilities[np.arange(len(labels)), labels]
    return np.column_stack([ranked, losses, true_class])


def _balanced(members: np.ndarray, nonmembers: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Equal numbers of member and non-member rows: a seeded subsample of the larger set."""
    count = min(len(members), len(nonmembers))
    return (
        members[np.sort(rng.choice(len(members), count, replace=False))],
        nonmembers[np.sort(rng.choice(len(nonmembers), count, replace=False))],
    )


def shadow_attack_auc(
    target_model: nn.Module,
    target_members: LabelledImages,
    target_nonmembers: LabelledImages,
    shadow_model: nn.Module,
    shadow_members: LabelledImages,
    shadow_nonmembers: LabelledImages,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    seed: int = 0,
) -> float:
    """AUC of a one-shadow-model membership attack (Shokri et al. 2017) on ``target_model``.

    Each image is described by its top ``k = min(3, classes)`` softmax probabilities (sorted,
    so the attack does not depend on which class won), its loss and its true class's
    probability. A logistic regression on standardised features learns members (1) from
    non-members (0) on the shadow model's images and scores the target's.

    Parameters
    ----------
    target_model : torch.nn.Module
        The classifier under attack.
    target_members, target_nonmembers : tuple of np.ndarray
        ``(images, labels)``, uint8 ``(N, C, H, W)`` and integer ``(N,)``: the target's
        training images and images from the same distribution it did not see.
    shadow_model : torch.nn.Module
        A model with as many classes, trained by the caller as the target was (same
        architecture and recipe), on ``shadow_members`` only.
    shadow_members, shadow_nonmembers : tuple of np.ndarray
        The attacker's own images, as for the target; disjoint from the target's in a fair audit.
    batch_size : int
        Images per forward pass.
    device : torch.device, optional
        Where to evaluate; by default where each model's parameters are.
    seed : int
        Seeds the subsampling that balances members and non-members.

    Returns
    -------
    float
        The ROC AUC on the target's images, 0.5 for chance.

    Raises
    ------
    ValueError
        If a set is malformed, the models' class counts differ or ``batch_size < 1``.
    """
    # Imported here: scikit-learn takes a while to import, and most users of this package never score.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sets = {
        "target_members": target_members,
        "target_nonmembers": target_nonmembers,
        "shadow_members": shadow_members,
        "shadow_nonmembers": shadow_nonmembers,
    }
    for name, (images, labels) in sets.items():
        _check_set(name, images, labels)
    outputs = {
        name: _outputs(shadow_model if name.startswith("shadow") else target_model, *pair, batch_size, device)
        for name, pair in sets.items()
    }
    classes, shadow_classes = outputs["target_members"][0].shape[1], outputs["shadow_members"][0].shape[1]
    if classes != shadow_classes:
        raise ValueError(f"the target model has {classes} classes and the shadow model {shadow_classes}")
    features = {name: _features(*outputs[name], sets[name][1], min(3, classes)) for name in sets}
    rng = np.random.default_rng(seed)
    # Balanced training data, so the attack model has no prior towards either answer; balanced
    # target sets, so the attack is judged on the same footing (the AUC itself ignores the ratio).
    shadow_in, shadow_out = _balanced(features["shadow_members"], features["shadow_nonmembers"], rng)
    target_in, target_out = _balanced(features["target_members"], features["target_nonmembers"], rng)
    attack = make_pipeline(StandardScaler(), LogisticRegression())
    attack.fit(np.concatenate([shadow_in, shadow_out]), np.r_[np.ones(len(shadow_in)), np.zeros(len(shadow_out))])
    return _auc(attack.predict_proba(target_in)[:, 1], attack.predict_proba(target_out)[:, 1])
