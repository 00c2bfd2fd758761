"""Loading the real public datasets of ../shared/data (skipped when that folder is absent)."""

from pathlib import Path

import numpy as np
import pytest

from fesf_fed.config import DataConfig
from fesf_fed.data import load_dataset


def test_br35h_sample_is_grey_with_both_classes(shared_data: Path) -> None:
    config = DataConfig(source="folder", path=shared_data / "br35h", image_size=64, max_per_class=15)
    data = load_dataset(config)
    assert data.images.shape == (30, 1, 64, 64)
    assert data.class_counts() == {"no_tumor": 15, "tumor": 15}
    assert data.skipped == []
    assert all(image_id.startswith(("no_tumor/", "tumor/")) for image_id in data.ids)


def test_every_br35h_jpeg_decodes_as_grey(shared_data: Path) -> None:
    # The whole set at a tiny size: one tinted or colour-judged file would make it 3-channel.
    data = load_dataset(DataConfig(source="folder", path=shared_data / "br35h", image_size=8))
    assert data.images.shape == (2201, 1, 8, 8)
    assert data.class_counts() == {"no_tumor": 1500, "tumor": 701}
    assert data.skipped == []


@pytest.mark.parametrize(
    "name, total, channels, n_classes",
    [
        # Official MedMNIST v2 train + val + test counts.
        ("breastmnist", 546 + 78 + 156, 1, 2),
        ("retinamnist", 1080 + 120 + 400, 3, 5),
        ("pneumoniamnist", 4708 + 524 + 624, 1, 2),
    ],
)
def test_medmnist_files_load_whole(shared_data: Path, name: str, total: int, channels: int, n_classes: int) -> None:
    path = shared_data / "medmnist" / f"{name}.npz"
    data = load_dataset(DataConfig(source="medmnist", path=path, image_size=28))
    assert data.images.shape == (total, channels, 28, 28)
    assert data.classes == [str(label) for label in range(n_classes)]
    assert min(data.class_counts().values()) > 0
    with np.load(path) as arrays:
        # At the native size the pixels are the file's own.
        first = np.atleast_3d(arrays["train_images"][0]).transpose(2, 0, 1)
        np.testing.assert_array_equal(data.images[0], first)
