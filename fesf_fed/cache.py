"""A site's surrogate cache: built once, reused across rounds and processes.

Layout under ``$FESF_HOME/cache/<site>/``::

    iqem-<key>/checkpoint.pt            IQEM weights (resumable training state)
    surrogates-<key>/<split>-NNNNN.npz  surrogate shards, written one by one
    surrogates-<key>/<split>-NNNNN.npz.sha256  each shard's SHA-256, written just after it
    surrogates-<key>/quality.json       Table 2/3 figures and the settings they used
    surrogates-<key>/manifest.json      written last: its presence marks a complete build
    surrogates-<key>/verified.json      the stamps of the shards last found intact (no need to hash them again)

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
import shutil
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


def _is_manifest(manifest: Any) -> bool:
    """Whether ``manifest`` has the shape of a build's description (what loading and reports read of it)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("site"), str):
        return False
    splits, outputs, shape = manifest.get("splits"), manifest.get("outputs"), manifest.get("image_shape")
    return (
        isinstance(splits, dict)
        and all(
            isinstance(part, dict)
            and isinstance(part.get("labels"), list)
            and all(type(label) is int for label in part["labels"])
            for part in splits.values()
        )
        and isinstance(outputs, list)
        and all(isinstance(kind, str) for kind in outputs)
        and isinstance(shape, list)
        and len(shape) == 3
        and all(type(side) is int for side in shape)
    )


def _remove(path: Path) -> None:
    """Remove a cache file, or a folder someone made in its place (the cache is FESF-Fed's own)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
        if not _is_manifest(manifest):
            return {}, "not a surrogate build's manifest"
        return manifest, None

    def shard_path(self, split: str, number: int) -> Path:
        """Where shard ``number`` of ``split`` is stored."""
        return self.directory / f"{split}-{number:05d}.npz"

    def shard_problem(self, split: str, number: int, size: int) -> str | None:
        """Why shard ``number`` of ``split`` cannot be trusted (``"missing"`` when absent), or None when it can.

        A shard with a recorded SHA-256 must match it; one without (written before hashes were
        recorded, interrupted between the shard and its hash, or its hash deleted) must be
        readable whole and hold ``size`` images in every stage.
        """
        path = self.shard_path(split, number)
        if not path.exists():
            return "missing"
        if not path.is_file():
            return "not a file"
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
                    # Reading a member checks its CRC.
                    held = {len(shard[name]) for name in shard.files}
            except Exception as exc:  # noqa: BLE001  numpy and zipfile raise many types; reported as one line
                return f"cannot be read: {exc.__class__.__name__}"
            if held != {size}:
                return f"it holds {', '.join(map(str, sorted(held))) or 'no'} images, not the {size} of the manifest"
        self._verified[path] = _stamp(path)
        return None

    @property
    def verified_path(self) -> Path:
        """Where the stamps of the shards last found intact are kept (``verified.json``)."""
        return self.directory / "verified.json"

    def _recall_verified(self) -> None:
        """Trust the shards whose stamp (inode, size, time) is still the one recorded when they were last found intact.

        A deployed site starts a fresh process for every Flower message: without this, each would
        hash the whole cache again. A shard replaced or written to since gets a new stamp and is hashed.
        """
        try:
            recorded = json.loads(self.verified_path.read_text(encoding="utf-8"))
            stamps = {self.directory / name: tuple(stamp) for name, stamp in recorded.items()}
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):  # none yet, or damaged
            return
        for path, stamp in stamps.items():
            if path.is_file() and _stamp(path) == stamp:
                self._verified[path] = _stamp(path)

    def damaged(self) -> list[tuple[Path, str]]:
        """The finished build's damaged files, each with what is wrong: the manifest, or shards.

        Hashes every shard not found intact since it was last written (``verified.json``); when
        all are intact, records that for the next process.
        """
        manifest, problem = self._parse_manifest()
        if problem:
            return [(self.manifest_path, problem)]
        self._recall_verified()
        found = []
        for split, part in manifest["splits"].items():
            for number, indices in self.shards(np.arange(len(part["labels"]))):
                problem = self.shard_problem(split, number, len(indices))
                if problem:
                    found.append((self.shard_path(split, number), problem))
        if not found:
            write_json(self.verified_path, {path.name: list(stamp) for path, stamp in self._verified.items()})
        return found

    def discard_shard(self, split: str, number: int) -> None:
        """Remove a shard and its recorded hash, so that the next build writes it again."""
        path = self.shard_path(split, number)
        self._verified.pop(path, None)
        _remove(path)
        _remove(hash_path(path))

    def discard(self) -> None:
        """Remove the whole build (manifest first, then quality figures, shards and hashes), to build it again."""
        _remove(self.manifest_path)
        _remove(self.quality_path)
        _remove(self.verified_path)
        for path in [*self.directory.glob("*.npz"), *self.directory.glob("*.npz.sha256")]:
            _remove(path)
        self._verified.clear()

    def clear_blocked(self) -> list[Path]:
        """Remove folders (or other non-files) standing where the manifest or quality figures are written.

        Returns what was removed, for the caller to report: a build could not write over them.
        """
        blocked = [path for path in (self.manifest_path, self.quality_path) if path.exists() and not path.is_file()]
        for path in blocked:
            _remove(path)
        return blocked

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
        _remove(hash_path(path))
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
        for number, part in self.shards(labels):
            path = self.shard_path(split, number)
            problem = self.shard_problem(split, number, len(part))
            if problem is None:
                try:
                    with np.load(path, allow_pickle=False) as shard:
                        images.append(shard[kind])
                except Exception as exc:  # noqa: BLE001  numpy and zipfile raise many types; reported as one line
                    problem = f"cannot be read: {exc.__class__.__name__}"
                else:
                    if len(images[-1]) != len(part):  # labels and images must pair up, whatever the files say
                        problem = f"it holds {len(images[-1])} images, not the {len(part)} of the manifest"
            if problem == "missing":
                raise DataError(f"{path}: surrogate shard missing; {REBUILD}")
            if problem:
                raise DataError(f"{path}: damaged surrogate shard ({problem}); {REBUILD}")
        return np.concatenate(images) if images else np.empty((0, *manifest["image_shape"]), np.uint8), labels
