"""A site's surrogate cache: built once, reused across rounds and processes.

Layout under ``$FESF_HOME/cache/<site>/``::

    iqem-<key>/checkpoint.pt            IQEM weights (resumable training state)
    surrogates-<key>/<split>-NNNNN.npz  surrogate shards, written one by one
    surrogates-<key>/quality.json       Table 2/3 figures and the settings they used
    surrogates-<key>/manifest.json      written last: its presence marks a complete build

Each key is the SHA-256 of everything its content depends on (data, split, host bank,
site key, pipeline and IQEM settings), so a changed input lands in a new folder and an
unchanged one finds the finished build. Every file is written atomically, so an
interrupted build resumes from the last finished shard.
"""

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.errors import DataError

#: Images per shard: small enough that an interruption loses little work.
SHARD_SIZE = 256
#: Bumped when the stored layout or the surrogate math changes, to invalidate old caches.
CACHE_FORMAT = 1


def content_key(parts: dict[str, Any]) -> str:
    """SHA-256 hex of a JSON-serialisable description of a build's inputs."""
    canonical = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class SurrogateCache:
    """The folder of one surrogate build: its shards, quality figures and manifest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

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
        """The finished build's description: ids, labels, classes, counts, skipped files, timings."""
        if not self.complete:
            raise DataError(f"{self.directory}: no finished surrogate build here; run `fesf surrogates` first")
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def shard_path(self, split: str, number: int) -> Path:
        """Where shard ``number`` of ``split`` is stored."""
        return self.directory / f"{split}-{number:05d}.npz"

    def has_shard(self, split: str, number: int) -> bool:
        """True when that shard was written completely (writes are atomic)."""
        return self.shard_path(split, number).is_file()

    @staticmethod
    def shards(indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Split a split's image indices into numbered shards, in order."""
        for number, start in enumerate(range(0, len(indices), SHARD_SIZE)):
            yield number, indices[start : start + SHARD_SIZE]

    def write_shard(self, split: str, number: int, arrays: dict[str, np.ndarray]) -> None:
        """Store one shard of surrogates (uint8 arrays by stage name), atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict's keys could be allow_pickle
        with atomic_writer(self.shard_path(split, number)) as stream:
            stream.write(buffer.getbuffer())

    def read_quality(self) -> dict[str, Any] | None:
        """The stored Table 2/3 figures, or None before they are measured."""
        if not self.quality_path.is_file():
            return None
        return json.loads(self.quality_path.read_text(encoding="utf-8"))

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
            with np.load(self.shard_path(split, number)) as shard:
                images.append(shard[kind])
        return np.concatenate(images) if images else np.empty((0, *manifest["image_shape"]), np.uint8), labels
