"""Honest splits: near-duplicates and named groups kept on one side, MedMNIST's own split, cache keys."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from fesf_fed.build import site_cache
from fesf_fed.config import DataConfig, parse_config
from fesf_fed.data import ImageSet, load_dataset, site_split, stratified_split
from fesf_fed.data.duplicates import near_duplicate_pairs
from fesf_fed.data.partition import partition_indices
from fesf_fed.errors import ConfigError, DataError

SEEDS = range(30)


def scan(rng: np.random.Generator, size: int = 64, shift: int = 0) -> np.ndarray:
    """A smooth random image, as coarse as a scan at this size; ``shift`` moves the view right by pixels."""
    field = gaussian_filter(rng.normal(size=(size + 8, size + 8)), 6)
    field = (field - field.min()) / (field.max() - field.min())
    return (field[4 : 4 + size, 4 + shift : 4 + shift + size] * 255).round().astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def one_side(groups: list[list[int]], *parts: np.ndarray) -> bool:
    """True when every group lies wholly in one of ``parts`` (training and test, or a whole ``SiteSplit``)."""
    part_of = {index: number for number, part in enumerate(parts) for index in part.tolist()}
    return all(len({part_of[index] for index in group}) == 1 for group in groups)


def test_noised_shifted_mirrored_and_exact_copies_stay_on_one_side(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        for index in range(12):
            save(tmp_path / label / f"{index:02d}.png", scan(rng))
    originals = {name: np.asarray(Image.open(tmp_path / "a" / f"{name}.png")) for name in ("00", "01", "02", "03")}
    noise = rng.normal(0, 8, (64, 64))
    save(tmp_path / "a" / "00-noised.png", np.clip(originals["00"] + noise, 0, 255).astype(np.uint8))
    save(tmp_path / "a" / "02-mirrored.png", originals["02"][:, ::-1])
    save(tmp_path / "b" / "03-copy.png", originals["03"])  # an exact copy, filed under the other class
    save(tmp_path / "a" / "20.png", scan(np.random.default_rng(9)))
    save(tmp_path / "a" / "20-shifted.png", scan(np.random.default_rng(9), shift=1))
    config = DataConfig(source="folder", path=tmp_path, image_size=32)
    data = load_dataset(config)

    copies = [("a/00.png", "a/00-noised.png"), ("a/02.png", "a/02-mirrored.png"), ("a/03.png", "b/03-copy.png")]
    copies.append(("a/20.png", "a/20-shifted.png"))
    pairs = [[data.ids.index(first), data.ids.index(second)] for first, second in copies]
    assert data.groups is not None
    assert all(data.groups[i] == data.groups[j] for i, j in pairs)
    # Nothing else is grouped: the distinct random images stay single.
    assert len(set(data.groups.tolist())) == len(data) - len(pairs)
    for seed in SEEDS:
        split = site_split(data, config.model_copy(update={"seed": seed}))
        assert one_side(pairs, *split), seed  # training, validation and test
        assert set(data.labels[split.test].tolist()) == {0, 1}
        assert set(data.labels[split.val].tolist()) == {0, 1}


def test_a_mixed_label_group_goes_with_its_majority_class() -> None:
    labels = np.array([0, 0, 1, 0, 0, 0, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 3, 4, 5, 6, 7, 8, 9])  # images 0-2: two of class 0, one of class 1
    for seed in SEEDS:
        train, test = stratified_split(labels, 0.5, seed, groups)
        assert one_side([[0, 1, 2]], train, test)
        assert 0 < len(np.intersect1d(test, np.flatnonzero(labels == 1)))


def test_named_csv_groups_and_near_duplicates_join(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = ["path,label,group"]
    for patient in range(8):
        for image in range(3):
            name = f"p{patient}-{image}.png"
            save(tmp_path / name, scan(rng))
            rows.append(f"{name},{'sick' if patient % 2 else 'healthy'},patient{patient}")
    # A copy of patient 0's image filed under patient 2 ties the two patients together.
    save(tmp_path / "copy.png", np.asarray(Image.open(tmp_path / "p0-0.png")))
    rows.append("copy.png,healthy,patient2")
    rows.append("single.png,healthy,")  # no group: an image of its own
    save(tmp_path / "single.png", scan(rng))
    manifest = tmp_path / "list.csv"
    manifest.write_text("\n".join(rows) + "\n")
    config = DataConfig(source="csv", path=manifest, image_size=32, test_fraction=0.3)
    data = load_dataset(config)
    assert data.groups is not None
    owner = {image_id: image_id.split("-")[0] for image_id in data.ids}
    members = {name: [i for i, image_id in enumerate(data.ids) if owner[image_id] == name] for name in owner.values()}
    joined = members["p0"] + members["p2"] + [data.ids.index("copy.png")]
    assert len({data.groups[index] for index in joined}) == 1
    assert len({data.groups[index] for index in members["p1"]}) == 1
    assert data.groups[data.ids.index("single.png")] not in data.groups[joined]
    for seed in SEEDS:
        split = site_split(data, config.model_copy(update={"seed": seed}))
        assert one_side([joined, *(members[f"p{p}"] for p in (1, 3, 4, 5, 6, 7))], *split)

    # Without near-duplicate grouping the copy follows its own patient (2) only.
    alone = load_dataset(config.model_copy(update={"group_duplicates": False}))
    assert alone.groups is not None and alone.groups[0] != alone.groups[data.ids.index("copy.png")]


def test_a_folder_group_pattern_names_patients(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for label in ("a", "b"):
        for patient in range(3):
            for image in range(2):
                save(tmp_path / label / f"{label}{patient}" / f"{image}.png", scan(rng))
    config = DataConfig(source="folder", path=tmp_path, image_size=16, group_pattern=r"^[^/]+/([^/]+)/")
    data = load_dataset(config)
    assert data.groups is not None
    assert data.groups[data.ids.index("a/a1/0.png")] == data.groups[data.ids.index("a/a1/1.png")]
    assert len(set(data.groups.tolist())) == 6


def test_grouped_split_stays_stratified_complete_and_seeded() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4, 300)
    groups = np.repeat(np.arange(300), sizes)
    labels = np.repeat(rng.integers(0, 3, 300), sizes)
    train, test = stratified_split(labels, 0.3, 4, groups)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for label in range(3):
        share = np.isin(np.flatnonzero(labels == label), test).mean()
        assert abs(share - 0.3) < 0.03
    assert all(np.array_equal(x, y) for x, y in zip(stratified_split(labels, 0.3, 4, groups), (train, test)))
    # Groups of one image give exactly the per-image split.
    singles = stratified_split(labels, 0.3, 4, np.arange(len(labels))[::-1].copy())
    assert all(np.array_equal(x, y) for x, y in zip(singles, stratified_split(labels, 0.3, 4)))


def test_simulated_sites_never_share_a_group() -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 5, 120)
    groups = np.repeat(np.arange(120), sizes)
    labels = np.repeat(np.arange(120) % 2, sizes)
    shares = partition_indices(labels, 3, "dirichlet", 1.0, seed=2, groups=groups)
    assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(len(labels)))
    owners = [{int(groups[i]) for i in share} for share in shares]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    # Groups of one image give exactly the per-image partition.
    singles = partition_indices(labels, 3, "iid", seed=2, groups=np.arange(len(labels)))
    assert all(np.array_equal(x, y) for x, y in zip(singles, partition_indices(labels, 3, "iid", seed=2)))


def write_npz(path: Path) -> Path:
    rng = np.random.default_rng(2)
    arrays = {}
    for split, count in (("train", 8), ("val", 3), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict's keys could be allow_pickle
    return path


def test_official_medmnist_split_tests_on_the_files_test_images(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "tiny.npz")
    config = DataConfig(source="medmnist", path=path, image_size=28, split="official")
    data = load_dataset(config)
    train, val, test = site_split(data, config)
    with np.load(path) as arrays:
        np.testing.assert_array_equal(data.images[test, 0], arrays["test_images"])
        np.testing.assert_array_equal(data.labels[test], arrays["test_labels"].reshape(-1))
        np.testing.assert_array_equal(data.images[val, 0], arrays["val_images"])
    assert [data.ids[i].split("/")[0] for i in train] == ["train"] * 8
    # The random split draws its test images from every part of the file.
    random_test = site_split(data, config.model_copy(update={"split": "random"})).test
    assert {data.ids[i].split("/")[0] for i in random_test} != {"test"}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"data.split": "official"}, "data.split 'official' needs data.source 'medmnist'"),
        ({"data.group_pattern": "("}, "not a valid regular expression"),
        ({"data.duplicate_distance": 40}, "less than or equal to 32"),
    ],
)
def test_split_settings_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(
            None, command_line={"data.source": "folder", "data.path": "/data", "hosts.source": "phantom", **fields}
        )


def test_changing_the_split_settings_changes_the_cache_key() -> None:
    tiny = {"data.image_size": 16, "data.phantom_per_class": 4, "device": "cpu"}
    base = site_cache(parse_config(None, command_line=tiny)).directory
    assert site_cache(parse_config(None, command_line=tiny)).directory == base
    changes = (
        ("data.group_duplicates", False),
        ("data.duplicate_distance", 4),
        ("data.test_fraction", 0.3),
        ("data.val_fraction", 0.2),
    )
    for field, value in changes:
        assert site_cache(parse_config(None, command_line={**tiny, field: value})).directory != base, field


def test_near_duplicate_search_ignores_flat_and_tiny_inputs() -> None:
    assert near_duplicate_pairs(np.zeros((1, 1, 8, 8), np.uint8), 8).shape == (0, 2)
    flat = np.stack([np.full((1, 16, 16), value, np.uint8) for value in (10, 200)])
    assert near_duplicate_pairs(flat, 8).shape == (0, 2)  # two flat images are not copies of each other
    data = ImageSet(np.zeros((2, 1, 8, 8), np.uint8), np.array([0, 1]), ["x", "y"], ["a", "b"])
    assert data.groups is None and data.subset(np.array([1])).groups is None


def test_a_dataset_of_one_group_per_class_is_a_one_line_error_not_an_empty_test_part() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    data = ImageSet(
        np.zeros((6, 1, 8, 8), np.uint8), labels, [f"i{n}" for n in range(6)], ["x", "y"], groups=labels.copy()
    )
    with pytest.raises(DataError, match="no group is left for the test part; add images"):
        site_split(data, DataConfig(source="phantom", test_fraction=0.4))


def test_validation_comes_from_the_training_part_class_by_class_and_can_be_switched_off() -> None:
    labels = np.repeat([0, 1, 2], [40, 20, 10])
    data = ImageSet(np.zeros((70, 1, 8, 8), np.uint8), labels, [f"i{n}" for n in range(70)], ["a", "b", "c"])
    config = DataConfig(source="phantom", test_fraction=0.4, val_fraction=0.25)
    train, val, test = site_split(data, config)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(70))
    # The test part is as without validation; validation is a quarter of each class's rest.
    np.testing.assert_array_equal(test, site_split(data, config.model_copy(update={"val_fraction": 0})).test)
    assert np.bincount(labels[val]).tolist() == [6, 3, 2]
    assert len(site_split(data, config.model_copy(update={"val_fraction": 0})).val) == 0


def test_a_site_too_small_to_spare_validation_images_trains_on_all_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    labels = np.array([0, 0, 1, 1])  # after the test part, one image per class: none to spare
    data = ImageSet(np.zeros((4, 1, 8, 8), np.uint8), labels, [f"i{n}" for n in range(4)], ["x", "y"])
    with caplog.at_level(logging.WARNING, logger="fesf_fed.data.split"):
        train, val, test = site_split(data, DataConfig(source="phantom", test_fraction=0.5))
    assert (len(train), len(val), len(test)) == (2, 0, 2)
    assert "no validation part" in caplog.text and "will not validate" in caplog.text
