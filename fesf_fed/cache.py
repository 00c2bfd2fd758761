"""A site's surrogate cache: built once, reused across rounds and processes.

Layout under ``$FESF_HOME/cache/<site>/``::

    iqem-<key>/checkpoint.pt            IQEM weights (resumable training state)
    surrogates-<key>/<split>-NNNNN.npz  surrogate shards, written one by one
    surrogates-<key>/<split>-NNNNN.npz.sha256  each shard's SHA-256, written just after it
    surrogates-<key>/quality.json       Table 2/3 figures and the settings they used
    surrogates-<key>/manifest.json      written last: its presence marks a complete build

Each key is the SHA-256 of everything its content depends on (data, split, host bank,
site key, pipeline and IQEM settings), so a changed input lands in a new folder and an
unchanged one finds the finished build. Every file is written atomically, so an
interrupted build resumes from the last finished shard.

Each shard's SHA-256 is recorded beside it (in ``sha256sum`` format) when it is written and
checked before the shard is trusted: by a build that resumes or reuses the cache, and by
:meth:`SurrogateCache.load`. A shard without a recorded hash (written before hashes were
recorded, or by a build interrupted between the two files) is trusted when it can be read
whole. The manifest records the SHA-256 of the IQEM checkpoint the surrogates were made with.
"""

import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.errors import DataError

logger = logging.getLogger(__name__)

#: Images per shard: small enough that an interruption loses little work.
SHARD_SIZE = 256

#: Bumped when the stored layout or the surrogate math changes, to invalidate old caches.
CACHE_FORMAT = 1


def content_key(parts: dict[str, Any]) -> str:
    """SHA-256 hex of a JSON-serialisable description of a build's inputs."""
    canonical = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


#: What a shard's ``.sha256`` file holds: ``sha256sum``'s line, ``<hex digest>  <file name>``.
_HASH_LINE = re.compile(r"([0-9a-f]{64})  (\S+)\n?")
#: What a repair tells the user to run, after naming the damaged file.
REBUILD = "run `fesf surrogates` again (with the same config) to rebuild it"


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_path(path: Path) -> Path:
    """Where the recorded SHA-256 of ``path`` is kept: ``<name>.sha256`` beside it."""
    return path.with_name(f"{path.name}.sha256")


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or written to: its inode, size and modification time."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class SurrogateCache:
    """The folder of one surrogate build: its shards, quality figures and manifest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Shards checked (or written) by this object, with their stamps: a build's reuse check
        # and the loads after it read each shard's bytes once, not twice.
        self._verified: dict[Path, tuple[int, int, int]] = {}

    @property
    def manifest_path(self) -> Path:
        """The manifest, written last: the mark of a complete build."""
        return self.directory / "manifest.json"

    @property
    def quality_path(self) -> Path:
        """The Table 2/3 figures and the quality settings that produced them."""
        return self.directory / "quality.json"

    @property
    def complete(self) -> bool:
        """True once every shard and the manifest are written."""
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The finished build's description: ids, labels, classes, counts, skipped files, timings.

        Raises
        ------
        DataError
            Before the build is finished, or for a damaged manifest (naming it).
        """
        if not self.complete:
            raise DataError(f"{self.directory}: no finished surrogate build here; run `fesf surrogates` first")
        manifest, problem = self._parse_manifest()
        if problem:
            raise DataError(f"{self.manifest_path}: damaged ({problem}); {REBUILD}")
        return manifest

    def manifest_problem(self) -> str | None:
        """Why the manifest cannot be read as a build's description, or None when it can."""
        return self._parse_manifest()[1]

    def _parse_manifest(self) -> tuple[dict[str, Any], str | None]:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {}, f"not readable JSON: {exc.__class__.__name__}"
        if not isinstance(manifest, dict) or not {"splits", "outputs", "image_shape"} <= manifest.keys():
            return {}, "not a surrogate build's manifest"
        return manifest, None

    def shard_path(self, split: str, number: int) -> Path:
        """Where shard ``number`` of ``split`` is stored."""
        return self.directory / f"{split}-{number:05d}.npz"

    def has_shard(self, split: str, number: int) -> bool:
        """True when that shard was written completely and is intact (:meth:`shard_problem`)."""
        return self.shard_problem(split, number) is None

    def shard_problem(self, split: str, number: int) -> str | None:
        """Why shard ``number`` of ``split`` cannot be trusted (``"missing"`` when absent), or None when it can.

        A shard with a recorded SHA-256 must match it; one without (written before hashes were
        recorded, or interrupted between the shard and its hash) must be readable whole.
        """
        path = self.shard_path(split, number)
        if not path.is_file():
            return "missing"
        if self._verified.get(path) == _stamp(path):
            return None
        recorded_at = hash_path(path)
        if recorded_at.is_file():
            try:
                match = _HASH_LINE.fullmatch(recorded_at.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                match = None
            if match is None or match.group(2) != path.name:
                return f"its recorded hash {recorded_at.name} is unreadable"
            if file_sha256(path) != match.group(1):
                return "its SHA-256 differs from the one recorded when it was written"
        else:
            try:
                with np.load(path, allow_pickle=False) as shard:
                    for name in shard.files:
                        shard[name]  # reading a member checks its CRC
            except Exception as exc:  # noqa: BLE001  numpy and zipfile raise many types; reported as one line
                return f"cannot be read: {exc.__class__.__name__}"
        self._verified[path] = _stamp(path)
        return None

    def damaged(self) -> list[tuple[Path, str]]:
        """The finished build's damaged files, each with what is wrong: the manifest, or shards.

        Reads every shard (hashing it), so it costs a pass over the cache's bytes.
        """
        manifest, problem = self._parse_manifest()
        if problem:
            return [(self.manifest_path, problem)]
        found = []
        for split, part in manifest["splits"].items():
            for number, _ in self.shards(np.arange(len(part["labels"]))):
                problem = self.shard_problem(split, number)
                if problem:
                    found.append((self.shard_path(split, number), problem))
        return found

    def discard_shard(self, split: str, number: int) -> None:
        """Remove a shard and its recorded hash, so that the next build writes it again."""
        path = self.shard_path(split, number)
        self._verified.pop(path, None)
        path.unlink(missing_ok=True)
        hash_path(path).unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the whole build (manifest first, then quality figures, shards and hashes), to build it again."""
        self.manifest_path.unlink(missing_ok=True)
        self.quality_path.unlink(missing_ok=True)
        for path in [*self.directory.glob("*.npz"), *self.directory.glob("*.npz.sha256")]:
            path.unlink(missing_ok=True)
        self._verified.clear()

    @staticmethod
    def shards(indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Split a split's image indices into numbered shards, in order."""
        for number, start in enumerate(range(0, len(indices), SHARD_SIZE)):
            yield number, indices[start : start + SHARD_SIZE]

    def write_shard(self, split: str, number: int, arrays: dict[str, np.ndarray]) -> None:
        """Store one shard of surrogates (uint8 arrays by stage name), then its SHA-256, each atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict's keys could be allow_pickle
        path = self.shard_path(split, number)
        # A stale hash must not outlive the shard it described (an interruption in between
        # leaves a shard without a hash, which is checked by reading it whole).
        hash_path(path).unlink(missing_ok=True)
        with atomic_writer(path) as stream:
            stream.write(buffer.getbuffer())
        with atomic_writer(hash_path(path)) as stream:
            stream.write(f"{hashlib.sha256(buffer.getbuffer()).hexdigest()}  {path.name}\n".encode())
        self._verified[path] = _stamp(path)

    def read_quality(self) -> dict[str, Any] | None:
        """The stored Table 2/3 figures, or None before they are measured (or when the file is damaged)."""
        if not self.quality_path.is_file():
            return None
        try:
            quality = json.loads(self.quality_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem: str | None = type(exc).__name__
        else:
            problem = None if isinstance(quality, dict) and "settings" in quality else "not quality figures"
        if problem:
            logger.warning("%s was damaged (%s); measuring the quality again", self.quality_path, problem)
            return None
        return quality

    def write_quality(self, quality: dict[str, Any]) -> None:
        """Store the Table 2/3 figures, atomically."""
        write_json(self.quality_path, quality)

    def finish(self, manifest: dict[str, Any]) -> None:
        """Mark the build complete by writing its manifest (the last file written)."""
        write_json(self.manifest_path, manifest)

    def load(self, split: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Return one split's surrogates of one stage and their labels.

        Parameters
        ----------
        split : str
            ``"train"``, ``"val"`` or ``"test"``.
        kind : str
            A stage the build kept: ``"x_sy"``, ``"x_su"`` or ``"x_su_prime"``.

        Returns
        -------
        images, labels : np.ndarray
            ``(N, C, H, W)`` uint8 and ``(N,)`` int64, in the manifest's order.

        Raises
        ------
        DataError
            For an unfinished build, a stage or split it lacks, or a damaged or missing
            shard (named, with the command that rebuilds it).
        """
        manifest = self.manifest()
        if split not in manifest["splits"]:
            raise DataError(f"{self.directory}: no split {split!r}; the build has {sorted(manifest['splits'])}")
        if kind not in manifest["outputs"]:
            raise DataError(
                f"{self.directory}: stage {kind!r} was not kept (kept: {', '.join(manifest['outputs'])}); "
                "add it to pipeline.outputs and build again"
            )
        labels = np.asarray(manifest["splits"][split]["labels"], dtype=np.int64)
        images = []
        for number, _ in self.shards(labels):
            path = self.shard_path(split, number)
            problem = self.shard_problem(split, number)
            if problem is None:
                try:
                    with np.load(path, allow_pickle=False) as shard:
                        images.append(shard[kind])
                except Exception as exc:  # noqa: BLE001  numpy and zipfile raise many types; reported as one line
                    problem = f"cannot be read: {exc.__class__.__name__}"
            if problem == "missing":
                raise DataError(f"{path}: surrogate shard missing; {REBUILD}")
            if problem:
                raise DataError(f"{path}: damaged surrogate shard ({problem}); {REBUILD}")
        return np.concatenate(images) if images else np.empty((0, *manifest["image_shape"]), np.uint8), labels
