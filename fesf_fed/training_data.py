"""The images a site trains and tests its classifier on, for each of the paper's training modes.

Table 1 of the paper compares classifiers trained on plaintext (the upper bound) with
ones trained on each surrogate stage. All four go through :func:`load_site_data`, so
the federation has one code path and one switch, ``mode``. Plaintext is read and
split exactly as a surrogate build splits it, so every mode sees the same images.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fesf_fed.build import build_surrogates
from fesf_fed.config import SURROGATE_KINDS, SiteConfig
from fesf_fed.data import load_dataset, site_split
from fesf_fed.progress import ProgressCallback, ProgressMeter, Stage
from fesf_fed.quality import QUALITY_PAIRS

#: What a classifier can be trained on: plaintext, or one surrogate stage.
TRAINING_MODES: tuple[str, ...] = ("plaintext", *SURROGATE_KINDS)


@dataclass
class SiteData:
    """A site's training, validation and test images in one mode, with its class names and surrogate quality.

    Images are uint8 ``(N, C, H, W)``; labels int64 ``(N,)``. The validation part picks the
    model (it may be empty: ``data.val_fraction`` 0); the test part reports it. ``quality`` holds
    scalar image-quality figures of the surrogates (SSIM and PSNR of each pair of
    the paper's Tables 2 and 3); it is empty in plaintext mode, which builds none.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    quality: dict[str, float] = field(default_factory=dict)
    #: Where the surrogates' hosts came from (:func:`host_bank_label`); empty in plaintext mode.
    hosts: str = ""

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])


def _quality_scalars(quality: dict[str, Any]) -> dict[str, float]:
    """Flatten the build's quality table into scalars such as ``ssim-x_pl-x_su_prime``."""
    names = {label: f"{reference}-{stage}" for label, reference, stage in QUALITY_PAIRS}
    scalars = {}
    for pair in quality["pairs"]:
        scalars[f"ssim-{names[pair['pair']]}"] = float(pair["ssim_mean"])
        scalars[f"psnr-{names[pair['pair']]}"] = float(pair["psnr_mean"])
    return scalars


def host_bank_label(hosts: dict[str, Any]) -> str:
    """A build manifest's ``hosts`` entry in a few words: source, count and fingerprint, e.g.
    ``"dataset, 220 hosts, sha256 3f2a9c01d4e5"``. It crosses to the server, so it names no
    path, and a phantom bank's fingerprint (derived from the site key) is left out."""
    words = [hosts["source"]] if hosts.get("source") else []
    words.append(f"{hosts['count']} hosts")
    if hosts.get("fingerprint") and hosts.get("source") != "phantom":
        words.append(f"sha256 {hosts['fingerprint'][:12]}")
    return ", ".join(words)


def load_site_data(
    config: SiteConfig, mode: str, progress: bool = False, report: ProgressCallback | None = None
) -> SiteData:
    """Return a site's images in ``mode``, building (or reusing) its surrogates when needed.

    Parameters
    ----------
    config : SiteConfig
        The site's validated configuration.
    mode : {"plaintext", "x_sy", "x_su", "x_su_prime"}
        What to train on. A surrogate stage missing from ``pipeline.outputs`` is added to it.
    progress : bool
        Show progress bars while building.
    report : callable, optional
        Hears of the site's progress (see :func:`~fesf_fed.build.build_surrogates`); in
        plaintext mode, of loading and then ready.

    Raises
    ------
    ValueError
        For an unknown mode.
    FesfError
        From the data loading or the surrogate build, naming what to fix.
    """
    if mode not in TRAINING_MODES:
        raise ValueError(f"mode must be one of {', '.join(TRAINING_MODES)}; got {mode!r}")
    if mode == "plaintext":
        meter = ProgressMeter(report, config.site)
        meter.stage(Stage.LOADING)
        data = load_dataset(config.data, progress=progress)
        train, val, test = site_split(data, config.data)
        meter.stage(Stage.READY)
        return SiteData(
            data.images[train],
            data.labels[train],
            data.images[val],
            data.labels[val],
            data.images[test],
            data.labels[test],
            data.classes,
        )
    if mode not in config.pipeline.outputs:
        config = config.model_copy(
            update={"pipeline": config.pipeline.model_copy(update={"outputs": (*config.pipeline.outputs, mode)})}
        )
    build = build_surrogates(config, progress=progress, report=report)
    train_images, train_labels = build.cache.load("train", mode)
    val_images, val_labels = build.cache.load("val", mode)
    test_images, test_labels = build.cache.load("test", mode)
    return SiteData(
        train_images,
        train_labels,
        val_images,
        val_labels,
        test_images,
        test_labels,
        build.manifest["classes"],
        _quality_scalars(build.quality),
        host_bank_label(build.manifest["hosts"]),
    )
