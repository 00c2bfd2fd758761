"""The audit's two parties: the victim site's surrogates and the attacker's own.

The victim is the site as configured, on the part of its images the attacker does not
hold: its secret key, its host bank and an IQEM generator trained on its images alone.
The attacker knows the method and its settings (Kerckhoffs's principle) and holds a
disjoint part of the site's data, or a public folder: it builds surrogates of its own
images with a key of its own, a phantom host bank seeded by that key and a generator
it trains, which gives it (surrogate, plaintext) pairs to learn from. It never uses the
victim's key unless an attack says the key has leaked.
"""

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fesf_fed.atomic import atomic_writer
from fesf_fed.build import host_bank_fingerprint, site_hosts, train_generator
from fesf_fed.cache import content_key
from fesf_fed.config import BUILT_IN_SOURCES, DataConfig, PartitionConfig, SiteConfig
from fesf_fed.data import ImageSet, load_dataset, source_fingerprint, stratified_split
from fesf_fed.device import select_device
from fesf_fed.errors import DataError
from fesf_fed.hosts import assign_hosts, key_fingerprint
from fesf_fed.pipeline import SurrogatePipeline
from fesf_fed.pixels import tensor_to_uint8, to_unit_float

__all__ = ["World", "attacker_config", "attacker_key", "make_world", "split_parties", "world_key"]


@dataclass
class World:
    """One party's plaintexts, their surrogates and how they were made.

    Attributes
    ----------
    plain : np.ndarray
        uint8 ``(N, C, H, W)`` plaintext images.
    labels : np.ndarray
        ``(N,)`` class labels.
    surrogates : dict of str to np.ndarray
        uint8 ``x_sy`` and ``x_su_prime`` of each image.
    host_index : np.ndarray
        ``(N,)`` each image's host in ``hosts``.
    hosts : np.ndarray
        uint8 ``(M, C, H, W)`` the host bank.
    groups : np.ndarray
        ``(N,)`` each image's near-duplicate group: a split keeps a group on one side.
    """

    plain: np.ndarray
    labels: np.ndarray
    surrogates: dict[str, np.ndarray]
    host_index: np.ndarray
    hosts: np.ndarray
    groups: np.ndarray

    def save(self, path: Path) -> None:
        """Store the world in one ``.npz`` file, written atomically."""
        arrays: dict[str, Any] = {
            "plain": self.plain,
            "labels": self.labels,
            "host_index": self.host_index,
            "hosts": self.hosts,
            "groups": self.groups,
        }
        arrays |= {f"surrogate_{kind}": images for kind, images in self.surrogates.items()}
        with atomic_writer(path) as stream:
            np.savez(stream, **arrays)

    @classmethod
    def load(cls, path: Path) -> "World":
        """Read a world that :meth:`save` wrote."""
        with np.load(path) as stored:
            surrogates = {
                name.removeprefix("surrogate_"): stored[name] for name in stored if name.startswith("surrogate_")
            }
            fields = {name: stored[name] for name in ("plain", "labels", "host_index", "hosts", "groups")}
            return cls(surrogates=surrogates, **fields)


def attacker_key(seed: int) -> bytes:
    """The attacker's own site key: anything but the victim's (derived from the audit seed, for reproducibility)."""
    return hashlib.sha256(f"fesf-audit-attacker\x00{seed}".encode()).digest()


def attacker_config(config: SiteConfig, host_count: int) -> SiteConfig:
    """The settings the attacker builds its surrogates with: the victim's, with a phantom bank of the same size.

    The victim's host folder is secret; the attacker draws generated phantoms instead. A
    dataset's public host part (``hosts.source: dataset``) is public: the attacker uses it too.
    """
    if config.hosts.source == "dataset":
        return config
    hosts = config.hosts.model_copy(update={"source": "phantom", "phantom_count": host_count, "path": None})
    return config.model_copy(update={"hosts": hosts})


def _public_data(config: SiteConfig, public: Path) -> DataConfig:
    """The data settings the public folder is read with: the site's, laid out like its data.

    Beside a built-in set, the folder has one sub-folder per class.
    """
    source = "folder" if config.data.source in BUILT_IN_SOURCES else config.data.source
    return config.data.model_copy(
        update={
            "source": source,
            "path": public,
            "max_per_class": None,
            "partition": PartitionConfig(),
            "public_hosts": 0.0,
        }
    )


def world_key(config: SiteConfig, victim_key: bytes) -> str:
    """What the two parties' surrogates depend on: the data's bytes, the victim's key and host bank,
    the IHM and IQEM settings and who holds which images; not the attacks' budgets, the device or
    the cache's bookkeeping. Computed without decoding an image."""
    audit = config.audit
    return content_key(
        {
            "data": source_fingerprint(config.data),
            "data_settings": config.data.model_dump(mode="json"),
            "hosts": host_bank_fingerprint(config, victim_key),
            "site_key": key_fingerprint(victim_key),
            "pipeline": config.pipeline.model_dump(mode="json", exclude={"outputs", "batch_size"}),
            "iqem": config.iqem.model_dump(mode="json", exclude={"checkpoint_every"}),
            "scenario": [audit.attacker_fraction, audit.seed],
            "public": None if audit.public is None else source_fingerprint(_public_data(config, audit.public)),
        }
    )


def split_parties(config: SiteConfig, progress: bool = False) -> tuple[ImageSet, ImageSet]:
    """The victim's images and the attacker's: a disjoint split of the site's data, or the public folder.

    The split is stratified by class and keeps near-duplicate groups on one side, so the
    attacker never holds a copy of a victim image unless the scenario says so.

    Raises
    ------
    FesfError
        For unusable data, or a public folder whose image size or channels differ.
    """
    data = load_dataset(config.data, progress=progress)
    audit = config.audit
    if audit.public is not None:
        if not audit.public.exists():
            raise DataError(
                f"audit.public {audit.public}: not found; name a folder of public images laid out like data.path"
            )
        public = load_dataset(_public_data(config, audit.public), progress)
        if public.images.shape[1:] != data.images.shape[1:]:
            raise DataError(
                f"audit.public {audit.public}: images load as {public.images.shape[1:]}, the site's as "
                f"{data.images.shape[1:]}; give a folder of the same modality"
            )
        unknown = sorted(set(public.classes) - set(data.classes))
        if unknown:
            raise DataError(
                f"audit.public {audit.public}: class {unknown[0]!r} is not one of the site's ({', '.join(data.classes)}); "
                "name the public images' classes as the site does"
            )
        # Labels index each set's own class names: give the public images the site's numbers.
        renumbered = np.array([data.classes.index(name) for name in public.classes])[public.labels]
        return data, dataclasses.replace(public, labels=renumbered, classes=list(data.classes))
    victim, attacker = stratified_split(data.labels, audit.attacker_fraction, audit.seed, data.groups)
    return data.subset(victim), data.subset(attacker)


def make_world(config: SiteConfig, data: ImageSet, key: bytes, checkpoint: Path, progress: bool = False) -> World:
    """Build the surrogates of ``data`` as a site with ``config`` and ``key`` would, G trained on ``data`` itself.

    Parameters
    ----------
    config : SiteConfig
        The party's settings: host bank, IHM strengths, IQEM, device.
    data : ImageSet
        The party's plaintext images.
    key : bytes
        The party's secret key: it assigns hosts, seeds phantom hosts and the amplitude perturbation.
    checkpoint : Path
        Where G's training checkpoint goes (an interrupted audit resumes from it).
    progress : bool
        Show IQEM's progress bar.
    """
    device = select_device(config.device)
    bank, spectra = site_hosts(config, key, data.images.shape[1], device)
    host_index = assign_hosts(data.ids, len(bank), key)
    generator = train_generator(config, data.images, host_index, bank, spectra, key, checkpoint, progress)
    pipeline = SurrogatePipeline(spectra, generator, config.pipeline, key)
    parts: dict[str, list[np.ndarray]] = {"x_sy": [], "x_su_prime": []}
    for start in range(0, len(data), config.pipeline.batch_size):
        batch = np.arange(start, min(start + config.pipeline.batch_size, len(data)))
        with torch.no_grad():
            outputs = pipeline(to_unit_float(data.images[batch], device), host_index[batch])
        for kind, images in parts.items():
            images.append(tensor_to_uint8(outputs[kind]))
    return World(
        plain=data.images,
        labels=data.labels,
        surrogates={kind: np.concatenate(images) for kind, images in parts.items()},
        host_index=host_index,
        hosts=bank.images,
        groups=np.arange(len(data)) if data.groups is None else data.groups,
    )
