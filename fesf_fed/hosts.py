"""The host bank and the keyed assignment of a host to every plaintext image.

Every surrogate carries its host's phase, so hosts are non-patient images of the
same modality, named explicitly (DESIGN.md, "Host images"). Which host an image
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

from fesf_fed.data.decode import IMAGE_SUFFIXES, UnreadableImage, read_image, to_channels
from fesf_fed.data.imageset import SkippedFile
from fesf_fed.data.phantom import phantom_hosts
from fesf_fed.errors import DataError
from fesf_fed.home import fesf_home

#: Bytes of a newly made site key.
KEY_BYTES = 32
#: The shortest key accepted from a file: shorter ones could be brute-forced.
MIN_KEY_BYTES = 16
# Domain separation: the fingerprint hashes the key under a prefix of its own, apart from its HMAC use.
_FINGERPRINT_DOMAIN = b"fesf-fed/host-key-fingerprint/v1\x00"


@dataclass
class HostBank:
    """The host images of a site, with what identifies them.

    Attributes
    ----------
    images : np.ndarray
        ``(N, C, H, W)`` uint8 hosts, in id order.
    ids : list of str
        One id per host: its path relative to the bank folder, or ``"phantom-host/003"``.
    fingerprint : str
        SHA-256 hex digest of the ids and pixels; it keys caches built with this bank.
    skipped : list of SkippedFile
        Files of the folder that could not be decoded, with the reason.
    """

    images: np.ndarray
    ids: list[str]
    fingerprint: str
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _content_fingerprint(images: np.ndarray, ids: Sequence[str]) -> str:
    digest = hashlib.sha256(repr(images.shape).encode())
    for host_id, image in zip(ids, images):
        # The separator keeps "a" + "bc" and "ab" + "c" apart.
        digest.update(host_id.encode() + b"\x00")
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


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
        The decoded hosts; files that could not be decoded are listed in ``skipped``.

    Raises
    ------
    DataError
        If the folder is missing or holds no usable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    what_to_put = f"put non-patient images of the same modality there ({', '.join(sorted(IMAGE_SUFFIXES))})"
    if not path.is_dir():
        raise DataError(f"{path}: host bank folder not found; create it and {what_to_put}")
    files = sorted(
        file
        for file in path.rglob("*")
        if file.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(file.relative_to(path)) and file.is_file()
    )
    images, ids, skipped = [], [], []
    for file in files:
        try:
            image = to_channels(read_image(file, size), channels)
        except UnreadableImage as exc:
            skipped.append(SkippedFile(path=str(file), reason=exc.reason))
            continue
        images.append(np.round(image * 255.0).astype(np.uint8))
        ids.append(file.relative_to(path).as_posix())
    if not images:
        unreadable = f" ({len(skipped)} unreadable file(s) skipped)" if skipped else ""
        raise DataError(f"{path}: no usable host image{unreadable}; {what_to_put}")
    stacked = np.stack(images)
    return HostBank(images=stacked, ids=ids, fingerprint=_content_fingerprint(stacked, ids), skipped=skipped)


def phantom_host_bank(count: int, size: int, seed: int = 0) -> HostBank:
    """The generated hosts that ship with the phantom dataset, as a host bank.

    Parameters
    ----------
    count : int
        Number of hosts (at least 1).
    size : int
        Height and width in pixels (at least 8).
    seed : int, optional
        Non-negative seed of :func:`fesf_fed.data.phantom.phantom_hosts`.
    """
    images = phantom_hosts(count, size, seed)
    ids = [f"phantom-host/{index:03d}" for index in range(count)]
    return HostBank(images=images, ids=ids, fingerprint=_content_fingerprint(images, ids))


def _create_key(path: Path) -> None:
    """Write a fresh random key to ``path`` unless a key is already there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
    hosts = [
        int.from_bytes(hmac.digest(key, image_id.encode(), "sha256")[:8], "big") % n_hosts for image_id in ids
    ]
    return np.array(hosts, dtype=np.int64)


def key_fingerprint(key: bytes) -> str:
    """A SHA-256 hex digest that identifies a key (for cache keys) without revealing it."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()
