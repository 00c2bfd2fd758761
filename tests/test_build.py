"""A site's surrogate build: the pipeline's stages, the content-addressed cache, reuse and resume."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fesf_fed.build as build_module
import fesf_fed.cache as cache_module
import fesf_fed.data.sources as sources_module
from fesf_fed.build import build_surrogates, site_cache
from fesf_fed.cache import SurrogateCache
from fesf_fed.config import PipelineConfig, SiteConfig, load_config
from fesf_fed.errors import DataError
from fesf_fed.ihm import hide, host_spectrum
from fesf_fed.iqem import IdentityGenerator
from fesf_fed.pipeline import SurrogatePipeline
from fesf_fed.progress import SiteProgress, Stage
from fesf_fed.quality import QUALITY_PAIRS
from tests.conftest import TINY_BUILD


def tiny_config(**changes: object) -> SiteConfig:
    return load_config(command_line={**TINY_BUILD, **changes})


def _folders(home: Path, prefix: str) -> list[Path]:
    return sorted((home / "cache" / "A").glob(f"{prefix}-*"))


def test_pipeline_chains_hide_generator_and_refinement() -> None:
    generator = torch.Generator().manual_seed(0)
    plain, hosts = torch.rand(4, 1, 12, 12, generator=generator), torch.rand(3, 1, 12, 12, generator=generator)
    pipeline = SurrogatePipeline(
        host_spectrum(hosts),
        IdentityGenerator(),
        PipelineConfig(alpha=0.5, beta=0.4, refine_alpha=0.5, refine_beta=0.2),
    )
    assigned = np.array([2, 0, 1, 2])
    stages = pipeline(plain, assigned)
    torch.testing.assert_close(stages["x_sy"], hide(plain, hosts[assigned], 0.5, 0.4))
    torch.testing.assert_close(stages["x_su"], stages["x_sy"])  # G is the identity here
    torch.testing.assert_close(stages["x_su_prime"], hide(plain, stages["x_su"], 0.5, 0.2))


def test_build_keeps_every_stage_with_labels_counts_and_quality(fesf_home: Path) -> None:
    build = build_surrogates(tiny_config(), progress=False)
    manifest = build.manifest
    assert not build.reused and build.cache.complete
    assert manifest["classes"] == ["normal", "lesion"]
    # 16 images: 6 test, then a tenth of the other 10 per class (at least one) for validation.
    assert {split: len(part["labels"]) for split, part in manifest["splits"].items()} == {
        "train": 8,
        "val": 2,
        "test": 6,
    }
    assert manifest["splits"]["test"]["counts"] == {"normal": 3, "lesion": 3}
    assert manifest["splits"]["val"]["counts"] == {"normal": 1, "lesion": 1}
    for kind in ("x_sy", "x_su", "x_su_prime"):
        images, labels = build.cache.load("test", kind)
        assert images.shape == (6, 1, 16, 16) and images.dtype == np.uint8
        assert labels.tolist() == manifest["splits"]["test"]["labels"]
    assert build.quality["images"] == 4 and len(build.quality["pairs"]) == len(QUALITY_PAIRS)
    assert build.quality["lpips_unavailable"].startswith("no local AlexNet weights")
    assert manifest["mask_coverage"]["hide"] == 1.0


def test_a_second_build_with_the_same_inputs_does_no_work(fesf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_surrogates(tiny_config(), progress=False)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached build loaded data or trained IQEM")

    monkeypatch.setattr(build_module, "load_dataset_parts", must_not_run)
    monkeypatch.setattr(build_module, "train_iqem", must_not_run)
    second = build_surrogates(tiny_config(), progress=False)
    assert second.reused and second.cache.directory == first.cache.directory
    assert second.quality == first.quality


def test_a_build_reports_its_stages_in_order_and_a_cached_one_says_so(fesf_home: Path) -> None:
    records: list[SiteProgress] = []
    build_surrogates(tiny_config(), progress=False, report=records.append)
    # A slow machine may add count reports within a stage; each stage starts with its own record.
    starts = [record for before, record in zip([None, *records], records) if not before or before.stage != record.stage]
    stages = [Stage.LOADING, Stage.IQEM, Stage.CONVERTING, Stage.QUALITY, Stage.READY]
    assert [record.stage for record in starts] == stages
    assert {record.site for record in records} == {"A"}
    iqem, converting, quality = starts[1:4]
    assert (iqem.done, iqem.total) == (0, TINY_BUILD["iqem.steps"])
    assert (converting.done, converting.total) == (0, 16)  # 10 training and 6 test images
    assert (quality.done, quality.total) == (0, TINY_BUILD["quality.max_images"])

    records.clear()
    build_surrogates(tiny_config(), progress=False, report=records.append)
    assert [record.stage for record in records] == [Stage.CACHED]


def test_changed_inputs_rebuild_and_reuse_what_they_can(fesf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    # A refinement-only change keeps G (same IQEM folder) but gives new surrogates.
    refined = build_surrogates(tiny_config(**{"pipeline.refine_beta": 0.3}), progress=False)
    assert refined.cache.directory != first.cache.directory and not refined.reused
    assert len(_folders(fesf_home, "iqem")) == 1
    # Changing the data changes everything.
    more = build_surrogates(tiny_config(**{"data.phantom_per_class": 9}), progress=False)
    assert len(_folders(fesf_home, "iqem")) == 2
    assert sum(len(split["labels"]) for split in more.manifest["splits"].values()) == 18
    # A new site key re-assigns hosts, so nothing is reused.
    (fesf_home / "secrets" / "A.key").write_bytes(b"k" * 32)
    assert site_cache(tiny_config()).directory != first.cache.directory


def _write_pngs(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{index}.png")


def _folder_site(tmp_path: Path) -> dict[str, str]:
    for seed, name in enumerate(("a", "b")):
        _write_pngs(tmp_path / "data" / name, 4, seed)
    _write_pngs(tmp_path / "hosts", 3, 7)
    return {
        "data.source": "folder",
        "data.path": str(tmp_path / "data"),
        "hosts.source": "folder",
        "hosts.path": str(tmp_path / "hosts"),
    }


def test_a_changed_image_or_host_file_invalidates_the_cache(fesf_home: Path, tmp_path: Path) -> None:
    changes = _folder_site(tmp_path)
    before = site_cache(tiny_config(**changes)).directory
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "data" / "a" / "0.png")
    after_data = site_cache(tiny_config(**changes)).directory
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "hosts" / "0.png")
    assert len({before, after_data, site_cache(tiny_config(**changes)).directory}) == 3


def test_a_cached_rebuild_decodes_no_image_or_host(
    fesf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = _folder_site(tmp_path)
    build_surrogates(tiny_config(**changes), progress=False)
    monkeypatch.setattr(sources_module, "read_image", lambda *a: pytest.fail("an image was decoded"))
    assert build_surrogates(tiny_config(**changes), progress=False).reused


def test_a_class_too_small_to_split_is_a_clear_error(fesf_home: Path) -> None:
    with pytest.raises(DataError, match=r"class 'normal' has 1 usable image\(s\); every class needs at least 2"):
        build_surrogates(tiny_config(**{"data.max_per_class": 1}), progress=False)


def test_cache_and_key_files_are_private_to_their_owner(fesf_home: Path) -> None:
    build = build_surrogates(tiny_config(), progress=False)
    for path in [build.cache.directory, *build.cache.directory.iterdir(), fesf_home / "secrets" / "A.key"]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} has mode {oct(mode)}"
    assert (fesf_home / "cache").stat().st_mode & 0o077 == 0


def test_an_interrupted_build_resumes_from_its_last_shard(
    fesf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "SHARD_SIZE", 4)
    written: list[str] = []
    interrupt_after = {"shards": 2}
    original = SurrogateCache.write_shard

    def write_then_die(self: SurrogateCache, split: str, number: int, arrays: dict) -> None:
        if len(written) == interrupt_after["shards"]:
            raise KeyboardInterrupt
        written.append(f"{split}-{number}")
        original(self, split, number, arrays)

    monkeypatch.setattr(SurrogateCache, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_surrogates(tiny_config(), progress=False)
    cache = site_cache(tiny_config())
    assert not cache.complete and written == ["train-0", "train-1"]

    written.clear()
    interrupt_after["shards"] = -1
    resumed = build_surrogates(tiny_config(), progress=False)
    assert resumed.cache.complete and written == ["val-0", "test-0", "test-1"]

    # The resumed build holds exactly what an uninterrupted one does.
    monkeypatch.setenv("FESF_HOME", str(tmp_path / "other-home"))
    (tmp_path / "other-home" / "secrets").mkdir(parents=True)
    (tmp_path / "other-home" / "secrets" / "A.key").write_bytes((fesf_home / "secrets" / "A.key").read_bytes())
    clean = build_surrogates(tiny_config(), progress=False)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(
            resumed.cache.load(split, "x_su_prime")[0], clean.cache.load(split, "x_su_prime")[0]
        )


def test_only_the_selected_stages_are_kept(fesf_home: Path) -> None:
    build = build_surrogates(tiny_config(**{"pipeline.outputs": ["x_su_prime"]}), progress=False)
    assert build.cache.load("train", "x_su_prime")[0].shape[0] == 8
    with pytest.raises(DataError, match="stage 'x_sy' was not kept .* add it to pipeline.outputs"):
        build.cache.load("train", "x_sy")


def test_quality_settings_are_remeasured_without_rebuilding(fesf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_surrogates(tiny_config(), progress=False)
    monkeypatch.setattr(build_module, "train_iqem", lambda *a, **k: pytest.fail("IQEM retrained"))
    monkeypatch.setattr(build_module, "_convert", lambda *a, **k: pytest.fail("surrogates rebuilt"))
    again = build_surrogates(tiny_config(**{"quality.max_images": 2}), progress=False)
    assert again.cache.directory == first.cache.directory and again.quality["images"] == 2


def test_reading_an_unfinished_build_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `fesf surrogates` first"):
        SurrogateCache(tmp_path).manifest()


def test_real_br35h_images_build_with_the_shipped_config(shared_data: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    overrides = {**TINY_BUILD, "data.max_per_class": 6, "data.path": str(shared_data / "br35h")}
    build = build_surrogates(load_config(repo / "configs" / "br35h.yaml", command_line=overrides), progress=False)
    manifest = build.manifest
    assert manifest["classes"] == ["no_tumor", "tumor"] and manifest["image_shape"] == [1, 16, 16]
    # The shipped config sets a tenth of the scans aside as same-domain hosts: one per class of these 12.
    assert manifest["skipped"] == [] and manifest["hosts"]["source"] == "dataset"
    assert manifest["hosts"]["count"] == 2
    assert manifest["splits"]["train"]["counts"] == {"no_tumor": 2, "tumor": 2}
    assert manifest["splits"]["val"]["counts"] == {"no_tumor": 1, "tumor": 1}
    images, labels = build.cache.load("test", "x_su_prime")
    assert images.shape == (4, 1, 16, 16) and sorted(labels.tolist()) == [0, 0, 1, 1]
