"""Damaged cache files and malformed config files end in one line naming the file, never a traceback.

A surrogate shard carries the SHA-256 recorded when it was written; a build checks it before
it reuses the cache (and rebuilds a damaged shard, saying so), and loading refuses one.
"""

import logging
from pathlib import Path

import numpy as np
import pytest

import fesf_fed.build as build_module
import fesf_fed.cache as cache_module
import fesf_fed.cli as cli_module
from fesf_fed.build import build_surrogates, site_cache, site_pipeline
from fesf_fed.cache import SurrogateCache
from fesf_fed.config import SiteConfig, load_config
from fesf_fed.errors import ConfigError, DataError
from tests.conftest import TINY_BUILD

TINY_FLAGS = [arg for field, value in TINY_BUILD.items() for arg in ("--set", f"{field}={value}")]


def tiny_config() -> SiteConfig:
    return load_config(command_line=dict(TINY_BUILD))


@pytest.fixture(autouse=True)
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards of 4 images: the tiny build's 8 training images make train-00000 and train-00001."""
    monkeypatch.setattr(cache_module, "SHARD_SIZE", 4)


def truncate(path: Path) -> None:
    """What `truncate -s` to a shorter size does: the file loses its end (a zip's central directory)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    """Silent damage: same size, one byte of the stored arrays changed."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def stored(cache: SurrogateCache) -> dict[str, np.ndarray]:
    return {split: cache.load(split, "x_su_prime")[0] for split in ("train", "val", "test")}


def damage_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if name in record.getMessage()]


@pytest.mark.parametrize("damage", [truncate, flip_a_byte])
def test_a_damaged_shard_is_rebuilt_by_the_next_build_which_says_so(
    damage, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    before = stored(first.cache)
    shard = first.cache.shard_path("train", 1)
    damage(shard)

    written: list[str] = []
    original = SurrogateCache.write_shard

    def record(self: SurrogateCache, split: str, number: int, arrays: dict) -> None:
        written.append(f"{split}-{number}")
        original(self, split, number, arrays)

    monkeypatch.setattr(SurrogateCache, "write_shard", record)
    with caplog.at_level(logging.INFO):
        again = build_surrogates(tiny_config(), progress=False)
    assert not again.reused and again.cache.directory == first.cache.directory
    (line,) = damage_lines(caplog, shard.name)
    assert str(shard) in line and "damaged" in line and "rebuilding it" in line and "\n" not in line
    assert written == ["train-1"]  # only the damaged shard is converted again
    after = stored(SurrogateCache(again.cache.directory))
    for split in before:
        np.testing.assert_array_equal(after[split], before[split])


@pytest.mark.parametrize("damage", [truncate, flip_a_byte])
def test_loading_a_damaged_shard_is_one_line_naming_it_and_what_to_run(damage) -> None:
    build = build_surrogates(tiny_config(), progress=False)
    shard = build.cache.shard_path("train", 1)
    damage(shard)
    with pytest.raises(DataError) as error:
        SurrogateCache(build.cache.directory).load("train", "x_su_prime")
    message = str(error.value)
    assert message.startswith(f"{shard}: damaged surrogate shard") and "\n" not in message
    assert "run `fesf surrogates` again" in message
    # The build object that checked the cache sees the damage done after its check too.
    with pytest.raises(DataError, match="damaged surrogate shard"):
        build.cache.load("train", "x_su_prime")


def test_loading_a_missing_shard_is_one_line_naming_it() -> None:
    build = build_surrogates(tiny_config(), progress=False)
    shard = build.cache.shard_path("test", 0)
    shard.unlink()
    with pytest.raises(DataError, match=r"test-00000\.npz: surrogate shard missing; run `fesf surrogates` again"):
        SurrogateCache(build.cache.directory).load("test", "x_su_prime")


def test_fesf_surrogates_rebuilds_a_truncated_shard_instead_of_reusing_it(
    fesf_home: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's steps: build, `truncate -s` a shard, build again, then load."""
    assert cli_module.main(["surrogates", *TINY_FLAGS, "--quiet"]) == 0
    (folder,) = (fesf_home / "cache" / "A").glob("surrogates-*")
    shard = folder / "train-00001.npz"
    truncate(shard)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        assert cli_module.main(["surrogates", *TINY_FLAGS, "--quiet"]) == 0
    output = capsys.readouterr()
    assert "reused from the cache" not in output.out and "built (" in output.out
    assert len(damage_lines(caplog, "train-00001.npz")) == 1
    assert SurrogateCache(folder).load("train", "x_su_prime")[0].shape[0] == 8


def test_every_shard_has_its_sha256_recorded_beside_it() -> None:
    build = build_surrogates(tiny_config(), progress=False)
    shards = sorted(build.cache.directory.glob("*.npz"))
    assert [path.name for path in shards] == [
        "test-00000.npz",
        "test-00001.npz",
        "train-00000.npz",
        "train-00001.npz",
        "val-00000.npz",
    ]
    for path in shards:
        recorded = (path.parent / f"{path.name}.sha256").read_text(encoding="utf-8")
        assert recorded == f"{cache_module.file_sha256(path)}  {path.name}\n"
    assert build.manifest["iqem_checkpoint_sha256"] == cache_module.file_sha256(
        build_module._plan(tiny_config()).checkpoint
    )


def test_a_build_made_before_hashes_is_reused_and_checked_by_reading_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    before = stored(first.cache)
    for recorded in first.cache.directory.glob("*.sha256"):
        recorded.unlink()
    manifest = first.cache.manifest()
    del manifest["iqem_checkpoint_sha256"]
    cache_module.write_json(first.cache.manifest_path, manifest)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("an intact old build was not reused")

    with monkeypatch.context() as patch:
        patch.setattr(build_module, "load_dataset_parts", must_not_run)
        assert build_surrogates(tiny_config(), progress=False).reused
    for split, images in stored(SurrogateCache(first.cache.directory)).items():
        np.testing.assert_array_equal(images, before[split])

    shard = first.cache.shard_path("val", 0)
    truncate(shard)  # no hash to compare: an unreadable old shard is still found and rebuilt
    with caplog.at_level(logging.INFO):
        again = build_surrogates(tiny_config(), progress=False)
    assert not again.reused and len(damage_lines(caplog, shard.name)) == 1
    np.testing.assert_array_equal(SurrogateCache(again.cache.directory).load("val", "x_su_prime")[0], before["val"])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"site": "A", "splits": {"tr', "not readable JSON"),
        ('{"site": "A", "splits": [], "outputs": [], "image_shape": []}', "not a surrogate build's manifest"),
        ('{"site": "A", "splits": {"train": {"labels": 5}}, "outputs": [], "image_shape": [1, 8, 8]}', "not a"),
    ],
)
def test_a_damaged_manifest_is_rebuilt_and_refused_by_load_in_one_line(
    text: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    first.cache.manifest_path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=rf"manifest\.json: damaged \({problem}.*run `fesf surrogates` again"):
        SurrogateCache(first.cache.directory).load("train", "x_su")
    with caplog.at_level(logging.INFO):
        again = build_surrogates(tiny_config(), progress=False)
    assert not again.reused and len(damage_lines(caplog, "manifest.json")) == 1
    assert again.manifest["splits"] == first.manifest["splits"]


def test_a_shard_swapped_for_another_without_its_hash_is_rebuilt_and_never_paired_with_wrong_labels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    before = stored(first.cache)
    train = first.cache.shard_path("train", 0)
    val = first.cache.shard_path("val", 0)
    cache_module.hash_path(train).unlink()
    train.write_bytes(val.read_bytes())  # a valid shard, of another split and size
    with pytest.raises(DataError, match=r"train-00000\.npz: damaged surrogate shard \(it holds \d+ images, not the 4"):
        SurrogateCache(first.cache.directory).load("train", "x_su_prime")
    with caplog.at_level(logging.INFO):
        again = build_surrogates(tiny_config(), progress=False)
    assert not again.reused and len(damage_lines(caplog, train.name)) == 1
    np.testing.assert_array_equal(SurrogateCache(again.cache.directory).load("train", "x_su_prime")[0], before["train"])


@pytest.mark.parametrize("name", ["train-00000.npz", "manifest.json", "quality.json"])
def test_a_folder_where_a_cache_file_belongs_is_cleared_and_the_file_rebuilt(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    before = stored(first.cache)
    path = first.cache.directory / name
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")
    with caplog.at_level(logging.INFO):
        again = build_surrogates(tiny_config(), progress=False)
    assert not again.reused and path.is_file() and len(damage_lines(caplog, name)) == 1
    np.testing.assert_array_equal(stored(SurrogateCache(again.cache.directory))["train"], before["train"])


def test_a_new_process_hashes_only_the_shards_changed_since_they_were_last_found_intact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    assert SurrogateCache(first.cache.directory).damaged() == []  # records verified.json
    hashed: list[str] = []
    real_sha256 = cache_module.file_sha256

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real_sha256(path)

    monkeypatch.setattr(cache_module, "file_sha256", counting)
    assert SurrogateCache(first.cache.directory).damaged() == []  # as a fresh process: nothing to hash
    assert hashed == []
    flip_a_byte(first.cache.shard_path("train", 1))  # rewritten: a new stamp
    (found,) = SurrogateCache(first.cache.directory).damaged()
    assert found[0].name == "train-00001.npz" and hashed == ["train-00001.npz"]


def test_a_damaged_quality_file_is_measured_again(caplog: pytest.LogCaptureFixture) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    first.cache.quality_path.write_text("[1, 2", encoding="utf-8")
    with caplog.at_level(logging.INFO):
        again = build_surrogates(tiny_config(), progress=False)
    assert not again.reused and again.quality == first.quality
    assert len(damage_lines(caplog, "quality.json")) == 1


def test_a_damaged_iqem_checkpoint_is_refused_then_retrained(caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config()
    first = build_surrogates(config, progress=False)
    checkpoint = build_module._plan(config).checkpoint
    with checkpoint.open("ab") as stream:  # damage torch.load may not notice
        stream.write(b"\0" * 16)
    with pytest.raises(DataError) as error:
        site_pipeline(config, 1)
    message = str(error.value)
    assert message.startswith(f"{checkpoint}: damaged IQEM checkpoint") and "\n" not in message
    assert "run `fesf surrogates` again" in message

    with caplog.at_level(logging.INFO):
        again = build_surrogates(config, progress=False)
    assert not again.reused and len(damage_lines(caplog, "checkpoint.pt")) == 1
    assert again.manifest["iqem_checkpoint_sha256"] == cache_module.file_sha256(checkpoint)
    assert again.cache.directory == first.cache.directory and site_cache(config).complete
    site_pipeline(config, 1)  # the retrained G matches its record


def test_a_deleted_iqem_checkpoint_is_trained_again_with_its_surrogates(caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config()
    build_surrogates(config, progress=False)
    checkpoint = build_module._plan(config).checkpoint
    checkpoint.unlink()  # measuring quality again and fesf predict need G: a rebuild must make it again
    with caplog.at_level(logging.INFO):
        again = build_surrogates(config, progress=False)
    assert not again.reused and checkpoint.is_file()
    (line,) = damage_lines(caplog, "checkpoint.pt")
    assert "(missing); training IQEM again and rebuilding the surrogates made with it" in line
    site_pipeline(config, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty config file"),
        ("# only a comment\n\n", "empty config file"),
        ("- data\n- hosts\n", "the top level is a list, not a mapping of sections"),
        ("data\n", "the top level is a string, not a mapping of sections"),
        ("[]\n", "the top level is a list, not a mapping of sections"),
    ],
)
def test_an_empty_or_non_mapping_config_file_is_one_line_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda path: path.write_bytes(b"\x00\x01\xff\xfe"), "not a text file (not UTF-8); name a YAML file"),
        (lambda path: path.mkdir(), "is a folder; name the YAML file itself"),
        (lambda path: path.write_text("[" * 5000 + "]" * 5000), "nested too deeply to be a config"),
    ],
)
def test_a_config_that_is_not_yaml_text_is_one_line_naming_it(tmp_path: Path, write, expected: str) -> None:
    path = tmp_path / "site.yaml"
    write(path)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {expected}") and "\n" not in str(error.value)


def test_fesf_with_an_empty_config_file_prints_one_line_and_builds_nothing(
    tmp_path: Path, fesf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert cli_module.main(["surrogates", "--config", str(path), *TINY_FLAGS, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: empty config file;") and err.count("\n") == 1
    assert not (fesf_home / "cache").exists()
