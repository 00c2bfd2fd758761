"""How well Br35H's classes separate by image size alone: the shortcut its data README warns of.

Prints, for each size feature of the original files (width, height, aspect ratio, pixel
count), the accuracy of the best single threshold on it, beside the majority-class share.
docs/results-notes.md quotes the figures. Run from the repository root:

    .venv/bin/python docs/br35h_size_shortcut.py [../shared/data/br35h]
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("no_tumor", "tumor")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def image_sizes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights (N, 2) of every image under ``folder/<class>/``, and their labels (N,)."""
    sizes, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted(path for path in (folder / name).glob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"error: {folder / name}: no images; name the Br35H folder (see ../shared/data/README.md)")
        for path in files:
            with Image.open(path) as image:  # reads the header only
                sizes.append(image.size)
            labels.append(label)
    return np.asarray(sizes, dtype=float), np.asarray(labels)


def best_threshold_accuracy(feature: np.ndarray, labels: np.ndarray) -> float:
    """The accuracy of the best rule ``feature > t`` (or ``<= t``) predicting label 1."""
    order = np.argsort(feature, kind="stable")
    feature, labels = feature[order], labels[order]
    # Every image at or below a cut answers 0, the rest 1; cuts only between distinct values.
    ones_below = np.concatenate([[0], np.cumsum(labels)])
    count = np.arange(len(labels) + 1)
    correct = (count - ones_below) + (labels.sum() - ones_below)
    valid = np.concatenate([[True], feature[1:] != feature[:-1], [True]])
    accuracy = correct[valid] / len(labels)
    return float(max(accuracy.max(), 1 - accuracy.min()))


def main(folder: Path) -> None:
    """Print the majority-class share and the best threshold's accuracy for each size feature."""
    sizes, labels = image_sizes(folder)
    width, height = sizes[:, 0], sizes[:, 1]
    features = {"width": width, "height": height, "aspect ratio": width / height, "pixel count": width * height}
    print(f"{len(labels)} images; majority-class share {max(np.bincount(labels)) / len(labels):.3f}")
    for name, values in features.items():
        print(f"best threshold on {name}: accuracy {best_threshold_accuracy(values, labels):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/br35h"))
