"""Prepare and check a site's host bank (``fesf hosts``): what it holds, where it came from, no patient image in it.

A bank of public, non-patient images of the site's own modality is what makes FESF's
surrogates look like their hosts (docs/design.md, "Host images"). Before a build uses a
bank, a site can check it (how many hosts decode, at which size and channels, its
fingerprint, and whether any host is a copy of one of the site's own images), and
prepare it: write the usable hosts, resized like the plaintext and copies left out, as
a folder that ``hosts.source: folder`` names (a consortium's sites can share it).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fesf_fed.atomic import atomic_writer
from fesf_fed.build import host_bank_fingerprint, site_hosts
from fesf_fed.config import SiteConfig
from fesf_fed.data import load_dataset_parts
from fesf_fed.data.imageset import SkippedFile
from fesf_fed.device import select_device
from fesf_fed.errors import DataError
from fesf_fed.hosts import HostBank, copies_of_site_images, load_site_key

#: The provenance file :func:`prepare_host_bank` writes beside the hosts.
BANK_MANIFEST = "hosts.json"


@dataclass(frozen=True)
class HostCopy:
    """A host that is a copy of one of the site's images: it must leave the bank."""

    host: str
    image: str
    how: str


@dataclass
class HostBankCheck:
    """What a host bank holds and whether a site may use it.

    Attributes
    ----------
    source : str
        ``folder``, ``dataset`` or ``phantom`` (hosts.source).
    location : str
        The folder, the dataset's public part, or "generated".
    count, channels, size : int
        Usable hosts, and the channels and size they were converted to (the site's).
    fingerprint : str
        SHA-256 that identifies the bank (the surrogate cache is keyed by it).
    skipped : list of SkippedFile
        Files that could not be decoded.
    copies : list of HostCopy
        Hosts that are copies of the site's own images (one entry per pair); a build refuses the
        bank while there are any.
    prepared : int or None
        Hosts :func:`prepare_host_bank` wrote (the bank without its copies); None for a check.
    """

    source: str
    location: str
    count: int
    channels: int
    size: int
    fingerprint: str
    skipped: list[SkippedFile] = field(default_factory=list)
    copies: list[HostCopy] = field(default_factory=list)
    prepared: int | None = None

    @property
    def usable(self) -> bool:
        """Whether a build may use the bank as it is: no host is a copy of a site image."""
        return not self.copies

    @property
    def copied_hosts(self) -> int:
        """How many distinct hosts copy a site image (one may copy several)."""
        return len({copy.host for copy in self.copies})


def _inspect(config: SiteConfig) -> tuple[HostBank, HostBankCheck]:
    parts = load_dataset_parts(config.data)
    channels = parts.site.images.shape[1]
    site_key = load_site_key(config.hosts.secret_file, config.site)
    bank, _ = site_hosts(config, site_key, channels, select_device("cpu"), parts.public_hosts)
    copies = []
    # Generated hosts cannot be patient images, and a dataset's public part is drawn as whole
    # groups of near-duplicates (fesf_fed.data.split.public_host_split): neither holds a copy.
    # (The check, rerun on another set of images, would flip borderline pairs on float rounding.)
    if config.hosts.source == "folder":
        found = copies_of_site_images(bank, parts.site, config.data.duplicate_distance)
        copies = [HostCopy(*copy) for copy in found]
    location = {
        "folder": str(config.hosts.path),
        "dataset": f"public part ({config.data.public_hosts:g}) of {config.data.path or config.data.source}",
        "phantom": "generated head phantoms",
    }[str(config.hosts.source)]
    check = HostBankCheck(
        source=str(config.hosts.source),
        location=location,
        count=len(bank),
        channels=channels,
        size=config.data.image_size,
        fingerprint=host_bank_fingerprint(config, site_key),
        skipped=list(bank.skipped),
        copies=copies,
    )
    return bank, check


def check_host_bank(config: SiteConfig) -> HostBankCheck:
    """Decode the host bank ``config`` names as a build would, and compare it with the site's images.

    Raises
    ------
    FesfError
        For an unusable data source or host folder (one line).
    """
    return _inspect(config)[1]


def prepare_host_bank(config: SiteConfig, out: Path) -> HostBankCheck:
    """Write the bank's usable hosts (copies of site images left out) as PNG files under ``out``.

    Each host is written resized to the site's size, with the site's channels (colour
    stays colour), under its id's name, with :data:`BANK_MANIFEST` recording where the
    bank came from, what was left out and why. ``hosts.source: folder`` with ``hosts.path:
    out`` then uses exactly these images.

    Raises
    ------
    DataError
        If ``out`` holds files already, or no host is left.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty; name a new folder for the prepared host bank")
    bank, check = _inspect(config)
    removed = {copy.host for copy in check.copies}
    kept = [index for index, host_id in enumerate(bank.ids) if host_id not in removed]
    if not kept:
        raise DataError(f"{check.location}: every host is a copy of a site image; nothing to prepare")
    out.mkdir(parents=True, exist_ok=True)
    # Named by position, not by id: ids may repeat once their suffix is gone, or hold "..".
    files = {}
    for number, index in enumerate(kept):
        pixels = np.moveaxis(bank.images[index], 0, -1)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        name = f"host-{number:05d}.png"
        with atomic_writer(out / name) as stream:
            image.save(stream, format="PNG")
        files[name] = bank.ids[index]
    check.prepared = len(kept)
    provenance = {**asdict(check), "files": files, "left_out": [asdict(copy) for copy in check.copies]}
    with atomic_writer(out / BANK_MANIFEST) as stream:
        stream.write(json.dumps(provenance, indent=2).encode())
    return check
