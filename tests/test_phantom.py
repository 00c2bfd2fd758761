"""The built-in phantom dataset and its hosts: deterministic, any size, classes told apart by shape."""

import numpy as np
import pytest
from scipy import ndimage

from fesf_fed.data.phantom import PHANTOM_CLASSES, phantom_dataset, phantom_hosts


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255.0


def _inside_skull(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A lightly smoothed (H, W) head image and the mask of its inside, skull rim excluded."""
    smooth = ndimage.gaussian_filter(_as_float(image), 0.7)
    head = ndimage.binary_fill_holes(smooth > 0.15)
    # Peeling a tenth of the image off the head's outline removes the whole skull rim.
    inside = ndimage.binary_erosion(head, iterations=int(np.ceil(0.1 * image.shape[0])))
    return smooth, inside


def _bright_pixels_inside_head(image: np.ndarray) -> int:
    """Pixels well above the tissue level, away from the skull rim."""
    smooth, inside = _inside_skull(image)
    tissue = np.median(smooth[inside])
    return int(((smooth > tissue + 0.15) & inside).sum())


def _tissue_level(image: np.ndarray) -> float:
    smooth, inside = _inside_skull(image)
    return float(np.median(smooth[inside]))


def test_dataset_has_the_documented_layout() -> None:
    data = phantom_dataset(3, 16)
    assert data.images.shape == (6, 1, 16, 16) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.labels.dtype == np.int64
    assert data.ids == [
        "normal/0000",
        "normal/0001",
        "normal/0002",
        "lesion/0000",
        "lesion/0001",
        "lesion/0002",
    ]
    assert data.classes == list(PHANTOM_CLASSES) == ["normal", "lesion"]
    assert data.skipped == []


def test_dataset_is_a_pure_function_of_seed_class_index_and_size() -> None:
    first = phantom_dataset(4, 24, seed=3)
    assert np.array_equal(first.images, phantom_dataset(4, 24, seed=3).images)
    assert not np.array_equal(first.images, phantom_dataset(4, 24, seed=4).images)
    # Asking for more images leaves the ones already drawn unchanged.
    more = phantom_dataset(6, 24, seed=3)
    assert np.array_equal(more.images[:4], first.images[:4])
    assert np.array_equal(more.images[6:10], first.images[4:])
    assert len({image.tobytes() for image in more.images}) == len(more)


@pytest.mark.parametrize("size", [8, 33, 65])
def test_any_size_renders_a_head_on_a_dark_background(size: int) -> None:
    images = _as_float(phantom_dataset(2, size).images)
    assert images.shape == (4, 1, size, size)
    quarter = size // 4
    middle = images[:, 0, quarter:-quarter, quarter:-quarter].mean(axis=(1, 2))
    corners = images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].mean(axis=1)
    assert np.all(middle > corners + 0.2)


def test_the_same_phantom_looks_the_same_at_every_size() -> None:
    large = _as_float(phantom_dataset(5, 128, seed=2).images)
    small = _as_float(phantom_dataset(5, 32, seed=2).images)
    shrunk = large.reshape(10, 1, 32, 4, 32, 4).mean(axis=(3, 5))
    same = np.abs(shrunk - small).mean(axis=(1, 2, 3))
    other = np.abs(shrunk - np.roll(small, 1, axis=0)).mean(axis=(1, 2, 3))
    assert same.max() < 0.04 and same.max() < other.min() / 2


def test_lesion_slices_have_a_bright_blob_inside_the_head_that_normal_ones_lack() -> None:
    data = phantom_dataset(40, 64, seed=1)
    bright = np.array([_bright_pixels_inside_head(image[0]) for image in data.images])
    assert np.all(bright[data.labels == 0] == 0)
    assert np.all(bright[data.labels == 1] >= 3)


def test_mean_brightness_does_not_tell_the_classes_apart() -> None:
    data = phantom_dataset(100, 32, seed=0)
    means = data.images.reshape(len(data), -1).mean(axis=1)
    is_lesion = data.labels == 1
    best = max(max(np.mean((means > t) == is_lesion), np.mean((means <= t) == is_lesion)) for t in means)
    assert best < 0.7


def test_hosts_are_deterministic_per_seed_and_index() -> None:
    hosts = phantom_hosts(4, 40, seed=1)
    assert hosts.shape == (4, 1, 40, 40) and hosts.dtype == np.uint8
    assert np.array_equal(hosts, phantom_hosts(4, 40, seed=1))
    assert np.array_equal(hosts[:2], phantom_hosts(2, 40, seed=1))
    assert not np.array_equal(hosts, phantom_hosts(4, 40, seed=2))
    assert len({host.tobytes() for host in hosts}) == 4


def test_hosts_come_from_a_visibly_different_source_than_the_slices() -> None:
    slices = phantom_dataset(20, 48, seed=0).images
    hosts = phantom_hosts(8, 48, seed=0)
    # Shepp-Logan brain matter is darker than the darkest phantom tissue.
    host_tissue = max(_tissue_level(host[0]) for host in hosts)
    slice_tissue = min(_tissue_level(image[0]) for image in slices)
    assert host_tissue + 0.05 < slice_tissue


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: phantom_dataset(0, 16), "per_class must be at least 1"),
        (lambda: phantom_dataset(2, 7), "size must be at least 8"),
        (lambda: phantom_dataset(2, 16, seed=-1), "seed must be a non-negative"),
        (lambda: phantom_hosts(0, 16), "count must be at least 1"),
        (lambda: phantom_hosts(2, 4), "size must be at least 8"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
