"""Build a site's surrogates: data -> host bank -> IQEM -> pipeline -> cache, and their quality.

This is the one entry point the CLI and the federation call. A build whose inputs
are unchanged returns the cached result without decoding a single image (its keys
hash file bytes and settings); an interrupted one resumes (IQEM from its
checkpoint, conversion from its last shard).
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fesf_fed.cache import REBUILD, SurrogateCache, content_key, file_sha256
from fesf_fed.config import SiteConfig
from fesf_fed.data import (
    ImageSet,
    data_location,
    load_dataset_parts,
    site_split,
    source_fingerprint,
    split_key,
    to_channels,
)
from fesf_fed.device import select_device
from fesf_fed.errors import ConfigError, DataError
from fesf_fed.home import fesf_home, private_folder
from fesf_fed.hosts import (
    HostBank,
    assign_hosts,
    dataset_bank_fingerprint,
    dataset_host_bank,
    folder_bank_fingerprint,
    key_fingerprint,
    load_host_bank,
    load_site_key,
    phantom_bank_fingerprint,
    phantom_bank_seed,
    phantom_host_bank,
    refuse_copies,
)
from fesf_fed.ihm import HostSpectrum, host_spectrum, mask_coverage
from fesf_fed.iqem import IdentityGenerator, IqemPairs, iqem_summary, load_generator, train_iqem
from fesf_fed.pipeline import SurrogatePipeline
from fesf_fed.pixels import tensor_to_uint8, to_unit_float
from fesf_fed.progress import ProgressCallback, ProgressMeter, Stage
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


@dataclass(frozen=True)
class _Plan:
    """Where a build's results go, decided from fingerprints alone (no image decoded)."""

    site_key: bytes
    cache: SurrogateCache
    checkpoint: Path


@dataclass
class _Inputs:
    """A site's inputs, loaded: what IQEM training, conversion and quality need."""

    data: ImageSet
    bank: HostBank
    spectra: HostSpectrum
    host_index: np.ndarray
    splits: dict[str, np.ndarray]
    device: torch.device
    site_key: bytes


def _host_folder(config: SiteConfig) -> Path:
    """The folder of a site's host bank when it is not phantom (HostConfig's validator requires one)."""
    if config.hosts.path is None:
        raise ConfigError("hosts.path is required for hosts.source 'folder'")
    return config.hosts.path


def _plan(config: SiteConfig) -> _Plan:
    """Compute the content keys of the IQEM weights and of the surrogates (which also depend on G)."""
    site_key = load_site_key(config.hosts.secret_file, config.site)
    iqem_key = content_key(
        {
            "data": source_fingerprint(config.data),
            "split": split_key(config.data),
            "hosts": host_bank_fingerprint(config, site_key),
            "site_key": key_fingerprint(site_key),
            "hide": [config.pipeline.alpha, config.pipeline.beta]
            # Listed only when on, so the keys of builds made before the setting existed stay valid.
            + ([config.pipeline.amplitude_noise] if config.pipeline.amplitude_noise else []),
            # How often a checkpoint is written does not change the weights.
            "iqem": config.iqem.model_dump(exclude={"checkpoint_every"}),
        }
    )
    refine = [config.pipeline.refine_alpha, config.pipeline.refine_beta, sorted(set(config.pipeline.outputs))]
    site_dir = _site_dir(config)
    return _Plan(
        site_key=site_key,
        cache=SurrogateCache(site_dir / f"surrogates-{content_key({'iqem': iqem_key, 'refine': refine})[:20]}"),
        checkpoint=site_dir / f"iqem-{iqem_key[:20]}" / "checkpoint.pt",
    )


def host_bank_fingerprint(config: SiteConfig, site_key: bytes) -> str:
    """What identifies the host bank ``config`` names (a phantom bank is seeded by ``site_key``), no image decoded."""
    if config.hosts.source == "phantom":
        return phantom_bank_fingerprint(config.hosts.phantom_count, config.data.image_size, phantom_bank_seed(site_key))
    if config.hosts.source == "dataset":
        return dataset_bank_fingerprint(config.data)
    return folder_bank_fingerprint(_host_folder(config))


def _site_dir(config: SiteConfig) -> Path:
    return private_folder(fesf_home() / "cache" / config.site)


def site_cache(config: SiteConfig) -> SurrogateCache:
    """The cache folder that a build of ``config`` uses (finished or not), found without decoding images."""
    return _plan(config).cache


def _batches(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def site_hosts(
    config: SiteConfig, site_key: bytes, channels: int, device: torch.device, public: ImageSet | None = None
) -> tuple[HostBank, HostSpectrum]:
    """The host bank that ``config`` names (phantoms seeded by ``site_key``) with ``channels`` channels, and its spectra.

    ``public``: the dataset's public host part when the caller has loaded it already
    (``hosts.source: dataset``); else it is loaded here.

    Raises
    ------
    FesfError
        For an unusable host folder.
    """
    if config.hosts.source == "phantom":
        seed = phantom_bank_seed(site_key)
        bank = phantom_host_bank(config.hosts.phantom_count, config.data.image_size, seed)
        bank.images = to_channels(bank.images, channels)
    elif config.hosts.source == "dataset":
        if public is None:
            public = load_dataset_parts(config.data).public_hosts
        assert public is not None  # SiteConfig requires data.public_hosts for this source
        bank = dataset_host_bank(public, channels)
    else:
        bank = load_host_bank(_host_folder(config), config.data.image_size, channels)
    return bank, host_spectrum(to_unit_float(bank.images, device))


def site_pipeline(config: SiteConfig, channels: int) -> tuple[SurrogatePipeline, HostBank, bytes]:
    """The site's trained surrogate pipeline, to convert images from outside its dataset.

    The images go through the same host bank, site key and IQEM generator G as the
    site's own surrogates, so call :func:`build_surrogates` with ``config`` first.

    Parameters
    ----------
    config : SiteConfig
        The site's validated configuration, as built.
    channels : int
        Channels of the images to convert (1 or 3): those the site's G was trained on.

    Returns
    -------
    pipeline : SurrogatePipeline
        On the configured device, with the trained G.
    bank : HostBank
        The host bank; pick each image's host with :func:`fesf_fed.hosts.assign_hosts`.
    site_key : bytes
        The site's secret key for that assignment.

    Raises
    ------
    FesfError
        For unusable hosts, device or key, when G has not been trained yet, or when its
        checkpoint no longer matches the SHA-256 the finished build recorded.
    """
    plan = _plan(config)
    device = select_device(config.device)
    problem = _checkpoint_problem(config, plan)
    if problem:
        raise DataError(f"{plan.checkpoint}: damaged IQEM checkpoint ({problem}); {REBUILD}")
    bank, spectra = site_hosts(config, plan.site_key, channels, device)
    generator = load_generator(plan.checkpoint, device, config.iqem)
    return SurrogatePipeline(spectra, generator, config.pipeline, plan.site_key), bank, plan.site_key


def _load_inputs(config: SiteConfig, site_key: bytes, progress: bool) -> _Inputs:
    parts = load_dataset_parts(config.data, progress=progress)
    data = parts.site
    too_few = {name: count for name, count in data.class_counts().items() if count < 2}
    if too_few:
        name, count = next(iter(too_few.items()))
        raise DataError(
            f"{data_location(config.data)}: class {name!r} has {count} usable image(s); every class needs "
            "at least 2 (one to train on, one to test on): add images or raise data.max_per_class"
        )
    split = site_split(data, config.data)
    device = select_device(config.device)
    bank, spectra = site_hosts(config, site_key, data.images.shape[1], device, parts.public_hosts)
    # A dataset's public part is drawn as whole groups of near-duplicates: it holds no copy by construction.
    if config.hosts.source == "folder":
        refuse_copies(bank, data, config.data.duplicate_distance)
    return _Inputs(
        data=data,
        bank=bank,
        spectra=spectra,
        host_index=assign_hosts(data.ids, len(bank.ids), site_key),
        splits=split.parts(),
        device=device,
        site_key=site_key,
    )


def train_generator(
    config: SiteConfig,
    plain: np.ndarray,
    host_index: np.ndarray,
    bank: HostBank,
    spectra: HostSpectrum,
    site_key: bytes,
    checkpoint: Path,
    progress: bool = True,
    meter: ProgressMeter | None = None,
) -> torch.nn.Module:
    """Train (or resume, or reuse from ``checkpoint``) IQEM's G on the x_sy of ``plain``, the first IHM step.

    ``plain`` are uint8 ``(N, C, H, W)`` training images, ``host_index`` their hosts in
    ``bank`` (whose ``spectra`` are on the device G trains on).
    """
    device = spectra.amplitude.device
    if config.iqem.steps == 0:  # IQEM off: x_su is x_sy
        return IdentityGenerator()
    first_hiding = SurrogatePipeline(spectra, IdentityGenerator(), config.pipeline, site_key)
    x_sy = np.concatenate(
        [
            tensor_to_uint8(first_hiding.hide(to_unit_float(plain[batch], device), host_index[batch]))
            for batch in _batches(np.arange(len(plain)), config.pipeline.batch_size)
        ]
    )
    pairs = IqemPairs(x_sy=x_sy, plain=plain, host_index=host_index)
    return train_iqem(pairs, bank.images, config.iqem, device, checkpoint, progress=progress, meter=meter)


def _convert(
    config: SiteConfig,
    inputs: _Inputs,
    pipeline: SurrogatePipeline,
    cache: SurrogateCache,
    progress: bool,
    meter: ProgressMeter,
) -> None:
    total = sum(len(indices) for indices in inputs.splits.values())
    meter.stage(Stage.CONVERTING, total)
    with tqdm(total=total, desc="surrogates", unit="img", disable=not progress) as bar:
        for split, indices in inputs.splits.items():
            for number, shard in cache.shards(indices):
                problem = cache.shard_problem(split, number, len(shard))
                if problem is None:  # finished before an interruption
                    bar.update(len(shard))
                    meter.advance(len(shard))
                    continue
                if problem != "missing":
                    _warn_damaged(config, cache.shard_path(split, number), problem)
                    cache.discard_shard(split, number)
                stages: dict[str, list[np.ndarray]] = {kind: [] for kind in config.pipeline.outputs}
                for batch in _batches(shard, config.pipeline.batch_size):
                    outputs = pipeline(
                        to_unit_float(inputs.data.images[batch], pipeline.device), inputs.host_index[batch]
                    )
                    for kind, parts in stages.items():
                        parts.append(tensor_to_uint8(outputs[kind]))
                    bar.update(len(batch))
                    meter.advance(len(batch))
                cache.write_shard(split, number, {kind: np.concatenate(parts) for kind, parts in stages.items()})


def _quality(config: SiteConfig, inputs: _Inputs, pipeline: SurrogatePipeline, meter: ProgressMeter) -> dict[str, Any]:
    """Tables 2/3 figures on a seeded sample of the test split (all of it when max_images is 0)."""
    test = inputs.splits["test"]
    limit = config.quality.max_images or len(test)
    sample = np.sort(np.random.default_rng(config.data.seed).permutation(test)[:limit])
    meter.stage(Stage.QUALITY, len(sample))
    images: dict[str, list[np.ndarray]] = {"x_pl": [], "host": [], "x_sy": [], "x_su": [], "x_su_prime": []}
    for batch in _batches(sample, config.pipeline.batch_size):
        plain = to_unit_float(inputs.data.images[batch], pipeline.device)
        outputs = pipeline(plain, inputs.host_index[batch])
        images["x_pl"].append(plain.cpu().numpy())
        images["host"].append(inputs.bank.images[inputs.host_index[batch]].astype(np.float32) / 255)
        images["x_sy"].append(outputs["x_sy"].cpu().numpy())
        images["x_su"].append(outputs["x_su"].cpu().numpy())
        images["x_su_prime"].append(outputs["x_su_prime"].cpu().numpy())
        meter.advance(len(batch))
    lpips_model, lpips_reason = load_lpips(config.quality.lpips_weights)
    pairs = measure_quality({name: np.concatenate(parts) for name, parts in images.items()}, lpips_model)
    return {
        "settings": config.quality.model_dump(mode="json"),
        "images": len(sample),
        "pairs": [vars(pair) for pair in pairs],
        "lpips_unavailable": lpips_reason or None,
    }


def _manifest(config: SiteConfig, inputs: _Inputs, checkpoint: Path, timings: dict[str, float]) -> dict[str, Any]:
    data, size = inputs.data, config.data.image_size
    splits = {
        name: {
            "ids": [data.ids[i] for i in indices],
            "labels": data.labels[indices].tolist(),
            "counts": dict(zip(data.classes, np.bincount(data.labels[indices], minlength=len(data.classes)).tolist())),
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
        "hosts": {
            "source": config.hosts.source,
            "path": None if config.hosts.path is None else str(config.hosts.path),
            "count": len(inputs.bank.ids),
            "fingerprint": host_bank_fingerprint(config, inputs.site_key),
            "skipped": [vars(skipped) for skipped in inputs.bank.skipped],
        },
        "mask_coverage": {
            "hide": mask_coverage(size, size, config.pipeline.alpha),
            "refine": mask_coverage(size, size, config.pipeline.refine_alpha),
        },
        "iqem": iqem_summary(checkpoint)
        if config.iqem.steps
        else {"steps": 0, "stopped": "IQEM is off (iqem.steps 0)"},
        # The G these surrogates were made with; checked before it is loaded or the build is reused.
        "iqem_checkpoint_sha256": file_sha256(checkpoint) if config.iqem.steps else None,
        "device": str(inputs.device),
        "seconds": timings,
        "config": config.model_dump(mode="json"),
    }


def _checkpoint_problem(config: SiteConfig, plan: _Plan) -> str | None:
    """Why the IQEM checkpoint differs from the one a finished build recorded, or None.

    None too when there is nothing to compare: IQEM off, no finished (or readable) build,
    or a build made before checkpoint hashes were recorded. A missing checkpoint is a
    problem too: measuring quality again and ``fesf predict`` need G, and only a rebuild
    makes it again.
    """
    if not config.iqem.steps or not plan.cache.complete or plan.cache.manifest_problem():
        return None
    recorded = plan.cache.manifest().get("iqem_checkpoint_sha256")
    if not recorded:
        return None
    if not plan.checkpoint.is_file():
        return "missing"
    if file_sha256(plan.checkpoint) != recorded:
        return f"its SHA-256 differs from the one recorded in {plan.cache.manifest_path}"
    return None


def _warn_damaged(config: SiteConfig, path: Path, problem: str, remedy: str = "rebuilding it") -> None:
    """The one log line of a damaged cache file: the site, the file, what is wrong, what is done."""
    logger.warning("site %s: %s was damaged (%s); %s", config.site, path, problem, remedy)


def _repair(config: SiteConfig, plan: _Plan) -> None:
    """Check a finished build before it is reused; remove what is damaged, for this build to write again.

    A damaged manifest or shard is removed with the manifest, so the build resumes and
    writes them again (the intact shards are kept). A damaged IQEM checkpoint is removed
    with every surrogate made with it: G is trained again and the surrogates rebuilt.
    Each repair is logged as one line naming the file.
    """
    cache = plan.cache
    problem = cache.manifest_problem()
    if problem:
        _warn_damaged(config, cache.manifest_path, problem)
        cache.manifest_path.unlink(missing_ok=True)
        return
    problem = _checkpoint_problem(config, plan)
    if problem:
        _warn_damaged(
            config, plan.checkpoint, problem, "training IQEM again and rebuilding the surrogates made with it"
        )
        plan.checkpoint.unlink(missing_ok=True)
        cache.discard()
        return
    damaged = cache.damaged()
    for path, problem in damaged:
        _warn_damaged(config, path, problem)
        split, number = path.stem.rsplit("-", 1)
        cache.discard_shard(split, int(number))
    if damaged:
        cache.manifest_path.unlink(missing_ok=True)


def build_surrogates(config: SiteConfig, progress: bool = True, report: ProgressCallback | None = None) -> SiteBuild:
    """Build (or reuse) a site's surrogates and their quality figures.

    Parameters
    ----------
    config : SiteConfig
        The site's validated configuration.
    progress : bool
        Show progress bars for loading, IQEM training and conversion.
    report : callable, optional
        Hears of each stage (loading, iqem, converting, quality, then ready, or cached
        alone) as a :class:`~fesf_fed.progress.SiteProgress`, and of the long stages'
        counts every few seconds.

    Returns
    -------
    SiteBuild
        ``reused`` is True when nothing had to be computed. A reused build's shards and
        IQEM checkpoint are checked against their recorded SHA-256 first; damaged ones are
        rebuilt (logged as one line each).

    Raises
    ------
    FesfError
        For unusable data, hosts, device or key, with a message that says what to do.
    """
    start = time.perf_counter()
    select_device(config.device)  # a bad device is an error even when the cache has everything
    plan = _plan(config)
    meter = ProgressMeter(report, config.site)
    for path in plan.cache.clear_blocked():
        _warn_damaged(config, path, "not a file")
    if plan.cache.complete:  # trusted only once its files match what was recorded when they were written
        _repair(config, plan)
    stored_quality = plan.cache.read_quality()
    if plan.cache.complete and stored_quality and stored_quality["settings"] == config.quality.model_dump(mode="json"):
        meter.stage(Stage.CACHED)
        return SiteBuild(plan.cache, plan.cache.manifest(), stored_quality, True, time.perf_counter() - start)

    timings: dict[str, float] = {}
    mark = time.perf_counter()
    meter.stage(Stage.LOADING)
    inputs = _load_inputs(config, plan.site_key, progress)
    size = config.data.image_size
    logger.info(
        "site %s: IHM window covers %.1f%% of the spectrum (alpha=%s), refinement %.1f%% (alpha'=%s)",
        config.site,
        100 * mask_coverage(size, size, config.pipeline.alpha),
        config.pipeline.alpha,
        100 * mask_coverage(size, size, config.pipeline.refine_alpha),
        config.pipeline.refine_alpha,
    )
    timings["load"] = time.perf_counter() - mark
    mark = time.perf_counter()
    generator: torch.nn.Module
    if plan.cache.complete:  # only the quality settings changed: reuse G, measure again
        generator = load_generator(plan.checkpoint, inputs.device, config.iqem)
    else:
        train = inputs.splits["train"]  # IQEM learns from the training split only
        generator = train_generator(
            config,
            inputs.data.images[train],
            inputs.host_index[train],
            inputs.bank,
            inputs.spectra,
            plan.site_key,
            plan.checkpoint,
            progress,
            meter,
        )
        timings["iqem"] = time.perf_counter() - mark
    pipeline = SurrogatePipeline(inputs.spectra, generator, config.pipeline, plan.site_key)
    if not plan.cache.complete:
        mark = time.perf_counter()
        _convert(config, inputs, pipeline, plan.cache, progress, meter)
        timings["convert"] = time.perf_counter() - mark
    mark = time.perf_counter()
    quality = _quality(config, inputs, pipeline, meter)
    timings["quality"] = time.perf_counter() - mark
    plan.cache.write_quality(quality)
    if not plan.cache.complete:
        plan.cache.finish(_manifest(config, inputs, plan.checkpoint, timings))
    meter.stage(Stage.READY)
    return SiteBuild(plan.cache, plan.cache.manifest(), quality, False, time.perf_counter() - start, timings)
