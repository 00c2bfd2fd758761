"""Splitting one dataset across simulated sites: IID or Dirichlet label skew, seeded."""

import numpy as np
import pytest

from fesf_fed.config import parse_config
from fesf_fed.data import load_dataset
from fesf_fed.data.partition import partition_indices
from fesf_fed.errors import ConfigError, DataError

LABELS = np.repeat([0, 1, 2], [60, 40, 30])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_image_goes_to_exactly_one_site_with_every_class(scheme):
    parts = partition_indices(LABELS, 4, scheme, alpha=0.3, seed=1)
    assert len(parts) == 4
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    for part in parts:
        assert np.bincount(LABELS[part], minlength=3).min() >= 2


def test_iid_gives_sites_the_same_class_mix():
    parts = partition_indices(LABELS, 2, "iid", seed=0)
    assert [np.bincount(LABELS[part]).tolist() for part in parts] == [
        [30, 20, 15],
        [30, 20, 15],
    ]


def test_small_alpha_skews_the_class_mix_and_the_seed_fixes_it():
    parts = partition_indices(LABELS, 3, "dirichlet", alpha=0.1, seed=3)
    shares = np.array([np.bincount(LABELS[part], minlength=3) / len(part) for part in parts])
    assert np.ptp(shares, axis=0).max() > 0.3  # some class is far more common at one site than another
    again = partition_indices(LABELS, 3, "dirichlet", alpha=0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(LABELS, 3, "dirichlet", alpha=0.1, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_too_few_images_for_the_sites_is_a_clear_error():
    with pytest.raises(DataError, match="class 2 has 30 image.*too few.*20 sites"):
        partition_indices(LABELS, 20, "iid")


def test_a_site_loads_only_its_share_of_the_dataset():
    base = {"data.image_size": 16, "data.phantom_per_class": 12}
    whole = load_dataset(parse_config({}, command_line=base).data)
    shares = [
        load_dataset(
            parse_config(
                {},
                assigned={
                    **base,
                    "data.partition.count": 3,
                    "data.partition.index": i,
                    "data.partition.scheme": "dirichlet",
                },
            ).data
        )
        for i in range(3)
    ]
    ids = [set(share.ids) for share in shares]
    assert set().union(*ids) == set(whole.ids)
    assert sum(len(share) for share in shares) == len(whole)


def test_partition_index_must_be_below_count():
    with pytest.raises(ConfigError, match="data.partition.index must be below"):
        parse_config({"data": {"partition": {"count": 2, "index": 2}}})
