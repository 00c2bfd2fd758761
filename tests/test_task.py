"""Local training and evaluation: the loops learn, and the figures are the textbook ones."""

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fesf_fed.data.phantom import phantom_dataset
from fesf_fed.models import build_model
from fesf_fed.task import classification_figures, evaluate, macro_auroc, one_class_answer, train

CPU = torch.device("cpu")


def test_figures_match_a_hand_computed_confusion_matrix() -> None:
    figures = classification_figures(np.array([[3, 1], [2, 4]]))
    # precision 3/5 and 4/5; recall 3/4 and 4/6; F1 per class 2PR/(P+R)
    assert figures["accuracy"] == pytest.approx(0.7)
    assert figures["precision"] == pytest.approx((0.6 + 0.8) / 2)
    assert figures["recall"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert figures["f1"] == pytest.approx((2 * 0.6 * 0.75 / 1.35 + 2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)) / 2)


def test_a_class_never_predicted_scores_zero_precision_not_nan() -> None:
    figures = classification_figures(np.array([[5, 0], [5, 0]]))
    assert figures == {
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "precision": 0.25,
        "recall": 0.5,
        "f1": pytest.approx(1 / 3),
    }


@pytest.mark.parametrize(
    "confusion,expected",
    [
        # scikit-learn's balanced_accuracy_score: the mean of the per-class recalls 3/4 and 4/6.
        ([[3, 1], [2, 4]], (0.75 + 4 / 6) / 2),
        # Imbalanced: accuracy 0.9, but the small class is never found.
        ([[90, 0], [10, 0]], 0.5),
        # Class 1 never occurs: scikit-learn leaves it out (recall 1 and 1/2), where macro recall counts it as 0.
        ([[4, 0, 0], [0, 0, 0], [1, 1, 2]], (1 + 0.5) / 2),
    ],
)
def test_balanced_accuracy_is_the_mean_recall_over_the_classes_that_occur(confusion, expected) -> None:
    assert classification_figures(np.array(confusion))["balanced_accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "confusion,answer",
    [
        ([[5, 0], [5, 0]], 0),
        ([[0, 0, 3], [0, 0, 2], [0, 0, 0]], 2),  # one column, two of the three classes present
        ([[3, 1], [2, 4]], None),
        ([[5, 0], [0, 0]], None),  # one true class only: answering it is no sign of anything
        ([[0, 0], [0, 0]], None),
    ],
)
def test_a_one_class_model_is_told_by_its_confusion_matrix(confusion, answer) -> None:
    assert one_class_answer(confusion) == answer


def test_training_fits_phantoms_and_evaluation_counts_every_image() -> None:
    data = phantom_dataset(24, 32, seed=3)
    torch.manual_seed(0)
    model = build_model("smallcnn", 2, 1)
    before = evaluate(model, data.images, data.labels, num_classes=2, batch_size=16, device=CPU)
    last_loss = train(model, data.images, data.labels, epochs=30, lr=1e-3, batch_size=8, device=CPU)
    after = evaluate(model, data.images, data.labels, num_classes=2, batch_size=16, device=CPU)
    assert after.accuracy >= 0.95 and after.loss < before.loss and last_loss < 0.3
    assert np.sum(after.confusion) == after.examples == 48
    figures = {"loss", "accuracy", "balanced-accuracy", "precision", "recall", "f1", "auroc", "examples"}
    assert set(after.scalars()) == figures and after.auroc is not None and after.auroc > 0.95
    assert after.scalars()["balanced-accuracy"] == after.balanced_accuracy
    # A test split of one class has no AUROC, and sends none, rather than an error.
    alone = evaluate(
        model, data.images[data.labels == 1], data.labels[data.labels == 1], num_classes=2, batch_size=16, device=CPU
    )
    assert alone.auroc is None and set(alone.scalars()) == figures - {"auroc"}


def _one_hot(labels: list[int], k: int, right: float) -> np.ndarray:
    """Probabilities that give the true class ``right`` and share the rest among the others."""
    probabilities = np.full((len(labels), k), (1 - right) / (k - 1))
    probabilities[np.arange(len(labels)), labels] = right
    return probabilities


@pytest.mark.parametrize("k", [2, 3])
def test_auroc_is_one_for_a_perfect_scorer_zero_for_an_inverted_one_and_half_for_a_random_one(k) -> None:
    labels = list(range(k)) * 2
    assert macro_auroc(np.array(labels), _one_hot(labels, k, 0.9)) == pytest.approx(1.0)
    assert macro_auroc(np.array(labels), _one_hot(labels, k, 0.0)) == pytest.approx(0.0)
    assert macro_auroc(np.array(labels), np.full((len(labels), k), 1 / k)) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    guessed, scores = rng.integers(0, k, 2000), rng.dirichlet(np.ones(k), 2000)
    assert macro_auroc(guessed, scores) == pytest.approx(0.5, abs=0.03)
    assert macro_auroc(guessed, scores) == pytest.approx(
        roc_auc_score(guessed, scores[:, 1]) if k == 2 else roc_auc_score(guessed, scores, multi_class="ovr")
    )


def test_auroc_ranks_like_scikit_learn_and_leaves_out_classes_that_do_not_occur() -> None:
    # Binary: positives score 0.4 and 0.9, negatives 0.1 and 0.6: 3 of the 4 pairs ranked right.
    binary = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    assert macro_auroc(np.array([0, 0, 1, 1]), binary) == pytest.approx(0.75)
    # Three classes, class 1 absent from the test split: classes 0 and 2, one vs the rest, are ranked perfectly.
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])
    assert macro_auroc(np.array([0, 0, 2, 2]), probabilities) == pytest.approx(1.0)
    # Fewer than two classes: no AUROC, not an error.
    assert macro_auroc(np.array([2, 2, 2, 2]), probabilities) is None


def test_training_is_reproducible_for_a_seed() -> None:
    data = phantom_dataset(6, 16, seed=1)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("smallcnn", 2, 1)
        train(model, data.images, data.labels, epochs=2, lr=1e-3, batch_size=4, device=CPU, seed=5)
        weights.append(model.get_parameter("classifier.weight").detach().clone())
    torch.testing.assert_close(weights[0], weights[1])


def test_fedprox_term_keeps_a_sites_update_near_the_global_model() -> None:
    data = phantom_dataset(6, 16, seed=1)
    torch.manual_seed(0)
    global_model = build_model("smallcnn", 2, 1)
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model("smallcnn", 2, 1)
        model.load_state_dict(global_model.state_dict())
        train(model, data.images, data.labels, epochs=3, lr=1e-2, batch_size=4, device=CPU, proximal_mu=mu)
        drift[mu] = sum(
            float(((now - then) ** 2).sum()) for now, then in zip(model.parameters(), global_model.parameters())
        )
    assert 0 < drift[10.0] < drift[0.0]


@pytest.mark.parametrize(
    "images,labels,message",
    [
        (np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.int64), "images must be uint8"),
        (np.zeros((2, 1, 8, 8), np.uint8), np.zeros(3, np.int64), r"labels must have shape \(2,\)"),
        (np.zeros((0, 1, 8, 8), np.uint8), np.zeros(0, np.int64), "no images"),
    ],
)
def test_bad_sets_are_refused(images: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(build_model("smallcnn", 2, 1), images, labels, epochs=1, lr=1e-3, batch_size=2, device=CPU)


def test_a_diverged_model_has_no_auroc_rather_than_an_error() -> None:
    labels = np.array([0, 1, 0, 1])
    assert macro_auroc(labels, np.full((4, 2), np.nan)) is None


def test_central_training_keeps_the_epoch_with_the_best_validation_f1(monkeypatch: pytest.MonkeyPatch) -> None:
    from fesf_fed import central
    from fesf_fed.training_data import SiteData

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 1, 16, 16), dtype=np.uint8)
    labels = np.repeat([0, 1], 30)
    images[labels == 1, :, 4:12, 4:12] //= 2  # a learnable but noisy difference
    validation = images[::3], labels[::3]
    # The test images carry the opposite labels: a choice made on them would pick another epoch.
    test = images[1::3].copy(), 1 - labels[1::3]
    data = SiteData(images, labels, *validation, *test, ["a", "b"])
    seen: list[float] = []
    real = central.evaluate

    def spy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, **options: Any) -> central.Evaluation:
        result = real(model, images, labels, **options)
        if images is data.val_images:
            seen.append(result.f1)
        return result

    def fit(data: SiteData, epochs: int) -> central.CentralResult:
        return central.train_central(
            data, model_name="smallcnn", epochs=epochs, lr=3e-3, batch_size=16, seed=1, device=CPU
        )

    monkeypatch.setattr(central, "evaluate", spy)
    result = fit(data, 6)
    # One validation after each epoch, none of the test images; the earliest best epoch wins.
    assert len(seen) == 6 and len(set(seen)) > 1, seen
    best = int(np.argmax(seen))
    assert (result.epoch, result.validation_f1) == (best + 1, seen[best])
    assert result.test.examples == len(test[1])
    # Without validation images the last epoch's model is the result.
    unvalidated = SiteData(images, labels, images[:0], labels[:0], *test, ["a", "b"])
    plain = fit(unvalidated, 2)
    assert (plain.epoch, plain.validation_f1) == (2, None)
