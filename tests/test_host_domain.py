"""Same-domain host banks: the dataset's public host part, copies of site images refused, colour kept, `fesf hosts`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fesf_fed.build import build_surrogates, site_hosts
from fesf_fed.cli import main
from fesf_fed.config import DataConfig, PartitionConfig, load_config
from fesf_fed.data import load_dataset, load_dataset_parts, source_fingerprint
from fesf_fed.data.split import public_host_split
from fesf_fed.errors import ConfigError, DataError
from fesf_fed.federation.protocol import DataDescription
from fesf_fed.training_data import load_site_data
from tests.conftest import TINY_BUILD
from tests.test_data_sources import write_npz

#: The phantom dataset, a quarter of it set aside as the public host bank.
PUBLIC = {**TINY_BUILD, "data.public_hosts": 0.25, "hosts.source": "dataset"}


def test_the_public_part_is_fixed_disjoint_stratified_and_never_a_site_image() -> None:
    config = load_config(command_line=PUBLIC)
    parts = load_dataset_parts(config.data)
    assert parts.public_hosts is not None
    site_ids, public_ids = set(parts.site.ids), set(parts.public_hosts.ids)
    assert not site_ids & public_ids and len(site_ids | public_ids) == 16
    assert parts.public_hosts.class_counts() == {"normal": 2, "lesion": 2}
    # The same part for every simulated site.
    for index in range(2):
        share = config.data.model_copy(update={"partition": PartitionConfig(count=2, index=index)})
        assert not set(load_dataset(share).ids) & public_ids
    # The plaintext baseline trains on the same images as the surrogates: the public part is out of both.
    plain = load_site_data(config, "plaintext")
    assert len(plain.train_labels) + len(plain.val_labels) + len(plain.test_labels) == 12


def test_the_public_part_keeps_near_duplicate_groups_whole() -> None:
    config = load_config(command_line=PUBLIC)
    data = load_dataset(config.data.model_copy(update={"public_hosts": 0.0}))
    data.groups = np.arange(len(data)) // 2  # pairs of copies
    kept, public = public_host_split(data, 0.25)
    assert not set(data.groups[kept].tolist()) & set(data.groups[public].tolist())


def test_the_public_part_does_not_follow_the_sites_seed(tmp_path: Path) -> None:
    config = DataConfig(source="medmnist", path=write_npz(tmp_path / "tiny.npz"), image_size=28, public_hosts=0.3)
    first = load_dataset_parts(config).public_hosts
    reseeded = load_dataset_parts(config.model_copy(update={"seed": 7})).public_hosts
    assert first is not None and reseeded is not None and first.ids == reseeded.ids


def test_official_split_draws_public_hosts_from_the_train_part_only(tmp_path: Path) -> None:
    config = DataConfig(source="medmnist", path=write_npz(tmp_path / "tiny.npz"), image_size=28, split="official")
    data = load_dataset(config)
    kept, public = public_host_split(data, 0.3, official=True)
    assert {data.ids[index].split("/")[0] for index in public} == {"train"}
    assert {data.ids[index] for index in kept} >= {
        image_id for image_id in data.ids if not image_id.startswith("train/")
    }


def test_setting_a_public_part_aside_keys_the_sites_images_anew() -> None:
    config = load_config(command_line=TINY_BUILD).data
    assert source_fingerprint(config) != source_fingerprint(config.model_copy(update={"public_hosts": 0.25}))


def test_dataset_hosts_need_a_public_part() -> None:
    with pytest.raises(ConfigError, match="hosts.source 'dataset' needs data.public_hosts"):
        load_config(command_line={**TINY_BUILD, "hosts.source": "dataset"})


def test_a_build_on_the_public_part_records_where_its_hosts_came_from() -> None:
    build = build_surrogates(load_config(command_line=PUBLIC), progress=False)
    hosts = build.manifest["hosts"]
    assert hosts["source"] == "dataset" and hosts["count"] == 4 and len(hosts["fingerprint"]) == 64
    assert build.manifest["iqem"]["stopped"]
    # What the server is told: source, count and fingerprint, no path.
    data = load_site_data(load_config(command_line=PUBLIC), "x_su_prime")
    assert data.hosts == f"dataset, 4 hosts, sha256 {hosts['fingerprint'][:12]}"
    description = DataDescription(tuple(data.classes), data.channels, 16, data.hosts)
    assert DataDescription.from_config(description.to_config()) == description


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def colour_site(tmp_path: Path) -> tuple[Path, Path]:
    """A colour data folder (two classes of six) and a colour host folder of four public images."""
    rng = np.random.default_rng(0)
    data, hosts = tmp_path / "data", tmp_path / "hosts"
    for label in ("a", "b"):
        for number in range(6):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            pixels[..., 0] = 220 if label == "a" else 30  # red apart from the other channels
            _save(data / label / f"{number}.png", pixels)
    for number in range(4):
        pixels = np.zeros((16, 16, 3), np.uint8)
        pixels[..., 1] = np.linspace(0, 255, 16, dtype=np.uint8)  # a green ramp
        pixels[..., 2] = 60 * number
        _save(hosts / f"host-{number}.png", pixels)
    return data, hosts


def _colour_config(data: Path, hosts: Path) -> dict[str, object]:
    return {
        **TINY_BUILD,
        "data.source": "folder",
        "data.path": str(data),
        "data.group_duplicates": False,
        "hosts.source": "folder",
        "hosts.path": str(hosts),
    }


def test_colour_hosts_stay_colour(colour_site: tuple[Path, Path]) -> None:
    config = load_config(command_line=_colour_config(*colour_site))
    bank, _ = site_hosts(config, b"k" * 32, 3, __import__("torch").device("cpu"))
    assert bank.images.shape == (4, 3, 16, 16)
    assert not np.array_equal(bank.images[:, 1], bank.images[:, 2])  # not grey copied to 3 channels
    build = build_surrogates(config, progress=False)
    images, _ = build.cache.load("test", "x_su_prime")
    assert images.shape[1] == 3 and not np.array_equal(images[:, 0], images[:, 1])


def test_a_host_identical_to_a_site_image_is_refused_in_one_line(colour_site: tuple[Path, Path]) -> None:
    data, hosts = colour_site
    shutil.copy(data / "b" / "3.png", hosts / "copied.png")
    with pytest.raises(DataError, match=r"^host copied.png is a copy of the site's image b/3.png \(identical pixels\)"):
        build_surrogates(load_config(command_line=_colour_config(data, hosts)), progress=False)


def _cli(config: dict[str, object], *command: str) -> list[str]:
    sets = [argument for key, value in config.items() for argument in ("--set", f"{key}={value}")]
    return ["hosts", *command, "-q", *sets]


def test_fesf_hosts_check_lists_copies_and_prepare_writes_a_bank_without_them(
    colour_site: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, hosts = colour_site
    shutil.copy(data / "a" / "0.png", hosts / "copied.png")
    config = _colour_config(data, hosts)
    assert main(_cli(config, "check")) == 2
    out, err = capsys.readouterr()
    assert "copied.png" in out and "a/0.png" in out and "5 hosts decoded" in out
    assert err.count("\n") == 1 and "1 host(s) are copies of site images" in err

    prepared = tmp_path / "prepared"
    assert main(_cli(config, "prepare", "--out", str(prepared))) == 0
    assert "wrote 4 hosts" in capsys.readouterr().out
    written = sorted(path.name for path in prepared.iterdir())
    assert written == [f"host-{number:05d}.png" for number in range(4)] + ["hosts.json"]
    provenance = json.loads((prepared / "hosts.json").read_text())
    assert provenance["source"] == "folder" and provenance["left_out"][0]["host"] == "copied.png"
    assert provenance["prepared"] == 4 and provenance["files"]["host-00001.png"] == "host-1.png"
    assert np.asarray(Image.open(prepared / "host-00001.png")).shape == (16, 16, 3)
    # The prepared folder is a bank a build accepts.
    build = build_surrogates(load_config(command_line={**config, "hosts.path": str(prepared)}), progress=False)
    assert build.manifest["hosts"]["count"] == 4
    # A folder with files in it is not overwritten.
    assert main(_cli(config, "prepare", "--out", str(prepared))) == 2
    assert "folder is not empty" in capsys.readouterr().err


def test_a_public_part_too_small_to_draw_is_one_line() -> None:
    config = load_config(command_line={**PUBLIC, "data.max_per_class": 1})
    with pytest.raises(DataError, match="can be spared as public hosts; add images or lower data.public_hosts"):
        load_dataset_parts(config.data)


def test_a_public_part_needs_the_near_duplicate_groups() -> None:
    with pytest.raises(ConfigError, match="data.public_hosts needs data.group_duplicates true"):
        load_config(command_line={**PUBLIC, "data.group_duplicates": False})
