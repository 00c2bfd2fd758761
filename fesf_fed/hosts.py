"""The host bank and the keyed assignment of a host to every plaintext image.

Every surrogate carries its host's phase, so hosts are non-patient images of the
same modality, named explicitly (docs/design.md, "Host images"). Which host an image
gets is decided by a keyed hash of the image id: reproducible for the site that
holds the key, not guessable by anyone else, because knowing an image's host
would let an attacker recover the plaintext amplitude exactly.
"""

import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fesf_fed.config import DataConfig, PartitionConfig
from fesf_fed.data.decode import IMAGE_SUFFIXES, UnreadableImage, to_channels
from fesf_fed.data.duplicates import near_duplicate_pairs
from fesf_fed.data.imageset import ImageSet, SkippedFile
from fesf_fed.data.phantom import phantom_hosts
from fesf_fed.data.sources import decode_files, file_digest, image_files, no_usable_image, source_fingerprint
from fesf_fed.errors import DataError
from fesf_fed.home import fesf_home, private_folder

#: Bytes of a newly made site key.
KEY_BYTES = 32
#: The shortest key accepted from a file: shorter ones could be brute-forced.
MIN_KEY_BYTES = 16
# Domain separation: the fingerprint hashes the key under a prefix of its own, apart from its HMAC use.
_FINGERPRINT_DOMAIN = b"fesf-fed/host-key-fingerprint/v1\x00"
_PHANTOM_SEED_DOMAIN = b"fesf-fed/phantom-host-seed/v1\x00"
_WHAT_TO_PUT = f"put non-patient images of the same modality there ({', '.join(sorted(IMAGE_SUFFIXES))})"


@dataclass
class HostBank:
    """The host images of a site, with what identifies them.

    Attributes
    ----------
    images : np.ndarray
        ``(N, C, H, W)`` uint8 hosts, in id order.
    ids : list of str
        One id per host: its path relative to the bank folder, or ``"phantom-host/003"``.
    skipped : list of SkippedFile
        Files of the folder that could not be used, by their path relative to it, with the reason.
    """

    images: np.ndarray
    ids: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def folder_bank_fingerprint(path: Path) -> str:
    """Identify a host bank folder by its usable files' ids and bytes, without decoding them.

    Files :func:`~fesf_fed.data.sources.image_files` skips (a name that is not valid
    UTF-8, a broken link) are not part of the bank, so they do not count.

    Raises
    ------
    DataError
        If the folder is missing or holds no usable image file.
    """
    digest = hashlib.sha256(b"folder\x00")
    files, _ = _bank_files(path)
    for file in files:
        # The separator keeps "a" + "bc" and "ab" + "c" apart.
        digest.update(file.relative_to(path).as_posix().encode() + b"\x00" + file_digest(file))
    return digest.hexdigest()


def _bank_files(path: Path) -> tuple[list[Path], list[SkippedFile]]:
    """The bank folder's image files, and those skipped with the reason (ids relative to ``path``)."""
    if not path.is_dir():
        raise DataError(f"{path}: host bank folder not found; create it and {_WHAT_TO_PUT}")
    files, skipped = image_files(path)
    if not files and not skipped:
        raise DataError(f"{path}: no host image files; {_WHAT_TO_PUT}")
    if not files:
        raise no_usable_image(path, skipped)
    return files, skipped


def load_host_bank(path: Path, size: int, channels: int) -> HostBank:
    """Read every image of a host bank folder, resized and converted for one site.

    Parameters
    ----------
    path : Path
        The folder; images are found recursively, in sorted order, hidden files ignored.
    size : int
        Height and width the hosts are resized to (the site's image size).
    channels : int
        1 or 3, the channel count of the site's images.

    Returns
    -------
    HostBank
        The decoded hosts; files that could not be used (undecodable, a name that is not
        valid UTF-8, a broken link...) are listed in ``skipped`` by their path relative
        to ``path``, with the reason.

    Raises
    ------
    DataError
        If the folder is missing or holds no usable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    files, skipped = _bank_files(path)
    images, ids = [], []
    for file, result in zip(files, decode_files(files, size, progress=False)):
        host_id = file.relative_to(path).as_posix()
        if isinstance(result, UnreadableImage):
            skipped.append(SkippedFile(path=host_id, reason=result.reason))
        else:
            images.append(to_channels(result, channels))
            ids.append(host_id)
    if not images:
        raise no_usable_image(path, skipped)
    return HostBank(images=np.stack(images), ids=ids, skipped=sorted(skipped, key=lambda entry: entry.path))


def dataset_host_bank(public: ImageSet, channels: int) -> HostBank:
    """The public host part of a site's dataset (``data.public_hosts``) as a host bank with ``channels`` channels."""
    return HostBank(images=to_channels(public.images, channels), ids=[f"public/{image_id}" for image_id in public.ids])


def dataset_bank_fingerprint(data: DataConfig) -> str:
    """Identify the public host part of a dataset by its source and draw, without decoding it.

    The part is drawn before the dataset is shared out, so every site of it has the same one.
    """
    whole = data.model_copy(update={"partition": PartitionConfig()})
    return hashlib.sha256(f"dataset\x00{source_fingerprint(whole)}\x00{data.split}".encode()).hexdigest()


def copies_of_site_images(bank: HostBank, data: ImageSet, max_distance: int) -> list[tuple[str, str, str]]:
    """The hosts that are copies of one of the site's own images: a host's phase is visible in every surrogate.

    Parameters
    ----------
    bank : HostBank
        The hosts, with the channels of ``data``.
    data : ImageSet
        The site's images, at the hosts' size.
    max_distance : int
        Most perceptual-hash bits in which a copy may differ (``data.duplicate_distance``).

    Returns
    -------
    list of (host id, image id, how)
        ``how`` is ``"identical pixels"`` or ``"near-duplicate"`` (another export,
        window or mirror image of it: :func:`fesf_fed.data.duplicates.near_duplicate_pairs`).
    """
    if bank.images.shape[1:] != data.images.shape[1:]:
        raise ValueError(f"hosts {bank.images.shape[1:]} and images {data.images.shape[1:]} must have one shape")
    count = len(bank)
    pairs = near_duplicate_pairs(np.concatenate([bank.images, data.images]), max_distance)
    copies = []
    for first, second in pairs[(pairs[:, 0] < count) & (pairs[:, 1] >= count)].tolist():
        image = data.images[second - count]
        how = "identical pixels" if np.array_equal(bank.images[first], image) else "near-duplicate"
        copies.append((bank.ids[first], data.ids[second - count], how))
    return copies


def refuse_copies(bank: HostBank, data: ImageSet, max_distance: int) -> None:
    """Raise a one-line DataError naming the first host that is a copy of a site image (:func:`copies_of_site_images`)."""
    copies = copies_of_site_images(bank, data, max_distance)
    if copies:
        host, image, how = copies[0]
        more = f" (and {len(copies) - 1} more)" if len(copies) > 1 else ""
        raise DataError(
            f"host {host} is a copy of the site's image {image} ({how}){more}: every surrogate shows its host's "
            "phase, so a patient image must never be a host; remove it from the host bank (`fesf hosts check` lists all)"
        )


def phantom_bank_seed(key: bytes) -> int:
    """The seed of a site's generated phantom hosts, derived from its secret key.

    A bank that anyone can regenerate would let them find each surrogate's host and
    recover the plaintext amplitude (docs/design.md, threat model), so the seed is secret too.
    """
    return int.from_bytes(hmac.new(key, _PHANTOM_SEED_DOMAIN, hashlib.sha256).digest()[:8], "big")


def phantom_host_bank(count: int, size: int, seed: int = 0) -> HostBank:
    """The generated hosts that ship with the phantom dataset, as a host bank.

    Parameters
    ----------
    count : int
        Number of hosts (at least 1).
    size : int
        Height and width in pixels (at least 8).
    seed : int, optional
        Non-negative seed of :func:`fesf_fed.data.phantom.phantom_hosts`; a site uses
        :func:`phantom_bank_seed` of its key.
    """
    images = phantom_hosts(count, size, seed)
    ids = [f"phantom-host/{index:03d}" for index in range(count)]
    return HostBank(images=images, ids=ids)


def phantom_bank_fingerprint(count: int, size: int, seed: int) -> str:
    """Identify a generated host bank by its parameters, without generating it."""
    return hashlib.sha256(f"phantom\x00{count}\x00{size}\x00{seed}".encode()).hexdigest()


def _create_key(path: Path) -> None:
    """Write a fresh random key to ``path`` unless a key is already there."""
    private_folder(path.parent)
    # mkstemp makes the file readable by its owner only (mode 0600).
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        # A hard link appears whole or not at all, like os.replace, but never
        # overwrites: if another process made the key first, its key is kept.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)


def load_site_key(path: Path | None, site: str) -> bytes:
    """Return the site's secret key for the host assignment, making one on first use.

    Parameters
    ----------
    path : Path or None
        The key file; ``None`` means ``$FESF_HOME/secrets/<site>.key``.
    site : str
        The site's name.

    Returns
    -------
    bytes
        The key. A missing file is created with 32 random bytes (mode 0600); an
        existing one is read back unchanged, so assignments are reproducible.

    Raises
    ------
    DataError
        If the file cannot be read or holds fewer than 16 bytes.
    """
    if path is None:
        if not site or Path(site).name != site or site.startswith("."):
            raise ValueError(f"site must be a plain name usable as a file name, got {site!r}")
        path = fesf_home() / "secrets" / f"{site}.key"
    path = Path(path)
    try:
        if not path.exists():
            _create_key(path)
        key = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read or create the site key ({exc.strerror}); check the path") from None
    if len(key) < MIN_KEY_BYTES:
        raise DataError(
            f"{path}: site key has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed; restore the "
            "original key file, or delete it to make a new one (every image then gets a new host)"
        )
    return key


def assign_hosts(ids: Sequence[str], n_hosts: int, key: bytes) -> np.ndarray:
    """Pick a host for every image id with a keyed hash.

    Host ``i`` of an image is ``HMAC-SHA256(key, id)``, its first 8 bytes read as
    an unsigned big-endian integer, modulo ``n_hosts``: the same for the same key
    and id on every run, close to uniform, and unpredictable without the key.

    Parameters
    ----------
    ids : sequence of str
        Stable image ids (see :class:`fesf_fed.data.imageset.ImageSet`).
    n_hosts : int
        Number of hosts in the bank (at least 1).
    key : bytes
        The site key from :func:`load_site_key`.

    Returns
    -------
    np.ndarray
        ``(len(ids),)`` int64 host indices in ``[0, n_hosts)``.
    """
    if n_hosts < 1:
        raise ValueError(f"n_hosts must be at least 1, got {n_hosts}")
    if not key:
        raise ValueError("key must not be empty")
    hosts = [int.from_bytes(hmac.digest(key, image_id.encode(), "sha256")[:8], "big") % n_hosts for image_id in ids]
    return np.array(hosts, dtype=np.int64)


def key_fingerprint(key: bytes) -> str:
    """A SHA-256 hex digest that identifies a key (for cache keys) without revealing it."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()
