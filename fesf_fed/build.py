"""Build a site's surrogates: data -> host bank -> IQEM -> pipeline -> cache, and their quality.

This is the one entry point the CLI and the federation call. A build whose inputs
are unchanged returns the cached result without loading a single image; an
interrupted one resumes (IQEM from its checkpoint, conversion from its last shard).
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fesf_fed.cache import SHARD_SIZE, SurrogateCache, content_key
from fesf_fed.config import SiteConfig
from fesf_fed.data import ImageSet, load_dataset, source_fingerprint, stratified_split, to_channels
from fesf_fed.device import select_device
from fesf_fed.home import fesf_home
from fesf_fed.hosts import HostBank, assign_hosts, key_fingerprint, load_host_bank, load_site_key, phantom_host_bank
from fesf_fed.ihm import host_spectrum, mask_coverage
from fesf_fed.iqem import load_generator, train_iqem
from fesf_fed.pipeline import SurrogatePipeline, to_uint8, to_unit_float
from fesf_fed.quality import load_lpips, measure_quality

logger = logging.getLogger(__name__)


@dataclass
class SiteBuild:
    """What a build produced: the cache folder, its manifest and its quality figures."""

    cache: SurrogateCache
    manifest: dict[str, Any]
    quality: dict[str, Any]
    reused: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Inputs:
    """A site's inputs, loaded: what conversion and quality measurement need."""

    data: ImageSet
    bank: HostBank
    host_index: np.ndarray
    splits: dict[str, np.ndarray]
    device: torch.device


def _site_dir(config: SiteConfig) -> Path:
    return fesf_home() / "cache" / config.site


def _host_bank(config: SiteConfig) -> HostBank:
    """The site's host bank, before it is matched to the data's channel count.

    A folder bank is read in colour: replicating a grey image is lossless, so its
    fingerprint identifies the bank before the data (and so its channels) is loaded.
    """
    if config.hosts.source == "phantom":
        return phantom_host_bank(config.hosts.phantom_count, config.data.image_size, config.data.seed)
    return load_host_bank(config.hosts.path, config.data.image_size, channels=3)


def _keys(config: SiteConfig, bank: HostBank, site_key: bytes) -> tuple[str, str]:
    """Content keys of the IQEM weights and of the surrogates (which also depend on G)."""
    iqem_inputs = {
        "data": source_fingerprint(config.data),
        "split": [config.data.test_fraction, config.data.seed],
        "hosts": bank.fingerprint,
        "site_key": key_fingerprint(site_key),
        "hide": [config.pipeline.alpha, config.pipeline.beta],
        "iqem": config.iqem.model_dump(),
    }
    iqem_key = content_key(iqem_inputs)
    pipeline = config.pipeline.model_dump(exclude={"batch_size"})
    return iqem_key, content_key({"iqem": iqem_key, "pipeline": pipeline})


def site_cache(config: SiteConfig) -> SurrogateCache:
    """The cache folder that a build of ``config`` uses (finished or not), found without loading images."""
    site_key = load_site_key(config.hosts.secret_file, config.site)
    _, surrogate_key = _keys(config, _host_bank(config), site_key)
    return SurrogateCache(_site_dir(config) / f"surrogates-{surrogate_key[:20]}")


def _load_inputs(config: SiteConfig, bank: HostBank, site_key: bytes, progress: bool) -> _Inputs:
    data = load_dataset(config.data, progress=progress)
    train, test = stratified_split(data.labels, config.data.test_fraction, config.data.seed)
    bank = HostBank(to_channels(bank.images, data.images.shape[1]), bank.ids, bank.fingerprint, bank.skipped)
    return _Inputs(
        data=data,
        bank=bank,
        host_index=assign_hosts(data.ids, len(bank.ids), site_key),
        splits={"train": train, "test": test},
        device=select_device(config.device),
    )


def _pipeline(config: SiteConfig, inputs: _Inputs, checkpoint: Path, progress: bool) -> SurrogatePipeline:
    spectra = host_spectrum(to_unit_float(inputs.bank.images, inputs.device))
    first_hiding = SurrogatePipeline(spectra, torch.nn.Identity(), config.pipeline)
    train = inputs.splits["train"]
    x_sy = np.concatenate(
        [
            to_uint8(first_hiding.hide(to_unit_float(inputs.data.images[batch], inputs.device), inputs.host_index[batch]))
            for batch in np.array_split(train, max(1, -(-len(train) // config.pipeline.batch_size)))
        ]
    )
    generator = train_iqem(x_sy, inputs.bank.images, config.iqem, inputs.device, checkpoint, progress=progress)
    return SurrogatePipeline(spectra, generator, config.pipeline)


def _convert(config: SiteConfig, inputs: _Inputs, pipeline: SurrogatePipeline, cache: SurrogateCache, progress: bool) -> None:
    total = sum(len(indices) for indices in inputs.splits.values())
    with tqdm(total=total, desc="surrogates", unit="img", disable=not progress) as bar:
        for split, indices in inputs.splits.items():
            for number, start in enumerate(range(0, len(indices), SHARD_SIZE)):
                shard = indices[start : start + SHARD_SIZE]
                if cache.has_shard(split, number):  # finished before an interruption
                    bar.update(len(shard))
                    continue
                stages: dict[str, list[np.ndarray]] = {kind: [] for kind in config.pipeline.outputs}
                for batch in np.array_split(shard, -(-len(shard) // config.pipeline.batch_size)):
                    outputs = pipeline(to_unit_float(inputs.data.images[batch], pipeline.device), inputs.host_index[batch])
                    for kind in stages:
                        stages[kind].append(to_uint8(outputs[kind]))
                    bar.update(len(batch))
                cache.write_shard(split, number, {kind: np.concatenate(parts) for kind, parts in stages.items()})


def _quality(config: SiteConfig, inputs: _Inputs, pipeline: SurrogatePipeline) -> dict[str, Any]:
    """Tables 2/3 figures on a seeded sample of the test split (all of it when max_images is 0)."""
    test = inputs.splits["test"]
    limit = config.quality.max_images or len(test)
    sample = np.sort(np.random.default_rng(config.data.seed).permutation(test)[:limit])
    images: dict[str, list[np.ndarray]] = {"x_pl": [], "host": [], "x_sy": [], "x_su_prime": []}
    for batch in np.array_split(sample, max(1, -(-len(sample) // config.pipeline.batch_size))):
        plain = to_unit_float(inputs.data.images[batch], pipeline.device)
        outputs = pipeline(plain, inputs.host_index[batch])
        images["x_pl"].append(plain.cpu().numpy())
        images["host"].append(inputs.bank.images[inputs.host_index[batch]].astype(np.float32) / 255)
        images["x_sy"].append(outputs["x_sy"].cpu().numpy())
        images["x_su_prime"].append(outputs["x_su_prime"].cpu().numpy())
    lpips_model, lpips_reason = load_lpips(config.quality.lpips_weights)
    pairs = measure_quality({name: np.concatenate(parts) for name, parts in images.items()}, lpips_model)
    return {
        "settings": config.quality.model_dump(mode="json"),
        "images": int(len(sample)),
        "pairs": [vars(pair) for pair in pairs],
        "lpips_unavailable": lpips_reason or None,
    }


def _manifest(config: SiteConfig, inputs: _Inputs, timings: dict[str, float]) -> dict[str, Any]:
    data, size = inputs.data, config.data.image_size
    splits = {
        name: {
            "ids": [data.ids[i] for i in indices],
            "labels": data.labels[indices].tolist(),
            "counts": data.subset(indices).class_counts(),
        }
        for name, indices in inputs.splits.items()
    }
    return {
        "site": config.site,
        "classes": data.classes,
        "image_shape": list(data.images.shape[1:]),
        "outputs": list(config.pipeline.outputs),
        "splits": splits,
        "skipped": [vars(skipped) for skipped in data.skipped],
        "hosts": {"count": len(inputs.bank.ids), "skipped": [vars(skipped) for skipped in inputs.bank.skipped]},
        "mask_coverage": {
            "hide": mask_coverage(size, size, config.pipeline.alpha),
            "refine": mask_coverage(size, size, config.pipeline.refine_alpha),
        },
        "device": str(inputs.device),
        "seconds": timings,
        "config": config.model_dump(mode="json"),
    }


def build_surrogates(config: SiteConfig, progress: bool = True) -> SiteBuild:
    """Build (or reuse) a site's surrogates and their quality figures.

    Parameters
    ----------
    config : SiteConfig
        The site's validated configuration.
    progress : bool
        Show progress bars for loading, IQEM training and conversion.

    Returns
    -------
    SiteBuild
        ``reused`` is True when nothing had to be computed.
    """
    start = time.perf_counter()
    select_device(config.device)  # a bad device is an error even when the cache has everything
    site_key = load_site_key(config.hosts.secret_file, config.site)
    bank = _host_bank(config)
    iqem_key, surrogate_key = _keys(config, bank, site_key)
    cache = SurrogateCache(_site_dir(config) / f"surrogates-{surrogate_key[:20]}")
    quality_settings = config.quality.model_dump(mode="json")
    stored_quality = cache.read_quality()
    if cache.complete and stored_quality and stored_quality["settings"] == quality_settings:
        return SiteBuild(cache, cache.manifest(), stored_quality, reused=True, seconds=time.perf_counter() - start)

    timings: dict[str, float] = {}
    mark = time.perf_counter()
    inputs = _load_inputs(config, bank, site_key, progress)
    logger.info(
        "site %s: IHM window covers %.1f%% of the spectrum (alpha=%s), refinement %.1f%% (alpha'=%s)",
        config.site,
        100 * mask_coverage(config.data.image_size, config.data.image_size, config.pipeline.alpha),
        config.pipeline.alpha,
        100 * mask_coverage(config.data.image_size, config.data.image_size, config.pipeline.refine_alpha),
        config.pipeline.refine_alpha,
    )
    timings["load"] = time.perf_counter() - mark
    checkpoint = _site_dir(config) / f"iqem-{iqem_key[:20]}" / "checkpoint.pt"
    mark = time.perf_counter()
    if cache.complete:
        # Only the quality settings changed: reuse G, measure again.
        pipeline = SurrogatePipeline(
            host_spectrum(to_unit_float(inputs.bank.images, inputs.device)),
            load_generator(checkpoint, inputs.device),
            config.pipeline,
        )
    else:
        pipeline = _pipeline(config, inputs, checkpoint, progress)
        timings["iqem"] = time.perf_counter() - mark
        mark = time.perf_counter()
        _convert(config, inputs, pipeline, cache, progress)
        timings["convert"] = time.perf_counter() - mark
    mark = time.perf_counter()
    quality = _quality(config, inputs, pipeline)
    timings["quality"] = time.perf_counter() - mark
    cache.write_quality(quality)
    if not cache.complete:
        cache.finish(_manifest(config, inputs, timings))
    return SiteBuild(cache, cache.manifest(), quality, reused=False, seconds=time.perf_counter() - start, timings=timings)
