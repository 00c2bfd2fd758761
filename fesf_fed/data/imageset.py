"""The in-memory form of a site's plaintext images, whatever source they came from."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SkippedFile:
    """An input that could not be used, and why; builds list these instead of crashing."""

    path: str
    reason: str


@dataclass
class ImageSet:
    """Images of one size and channel count, with their labels and stable ids.

    Attributes
    ----------
    images : np.ndarray
        ``(N, C, H, W)`` uint8; C is 1 for grey data, 3 for colour.
    labels : np.ndarray
        ``(N,)`` int64 indices into ``classes``.
    ids : list of str
        One stable id per image (a path relative to the data root, or
        ``"<split>/<index>"`` for array files). It keys the host assignment, so it
        never changes between runs for the same input.
    classes : list of str
        Class names, in label order.
    skipped : list of SkippedFile
        Inputs left out, with the reason.
    groups : np.ndarray or None
        ``(N,)`` int64 group of each image (near-duplicates, one patient's images):
        images with the same value stay on one side of a split and in one site's
        share. None: every image is its own group.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {self.images.dtype} {self.images.shape}")
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError("images, labels and ids must have the same length")
        if self.groups is not None and self.groups.shape != (len(self.ids),):
            raise ValueError(f"groups must be ({len(self.ids)},), got {self.groups.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: np.ndarray) -> "ImageSet":
        """Return the images at ``indices`` (the skipped list is kept whole)."""
        return ImageSet(
            images=self.images[indices],
            labels=self.labels[indices],
            ids=[self.ids[i] for i in indices],
            classes=self.classes,
            skipped=self.skipped,
            groups=None if self.groups is None else self.groups[indices],
        )

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name, in label order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}
