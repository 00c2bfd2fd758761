"""How many test images have a near-duplicate in training: random split versus grouped split.

A near-duplicate is an image with SSIM >= 0.9 at 64 px (skimage's defaults), as such, or
mirrored left-right (``--no-mirrored`` leaves mirrored copies out). Loads a folder dataset
at 64 px (one sub-folder per class), finds the near-duplicate groups the default
``data.group_duplicates`` finds, and for several seeds counts the test images that
have a near-duplicate on the training side, for the old per-image split (``groups``
None, what FESF-Fed did before) and for the grouped split (the default now). Reads the
data in place; writes nothing.

    python benchmarks/split_leakage.py ../shared/data/br35h

SSIM is computed exactly for every pair whose Pearson correlation at 64 px is at least
0.85 (plain or mirrored); on Br35H every pair with SSIM >= 0.85 in 40 exhaustively
compared rows had a correlation of at least 0.955, so the prefilter loses none.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from skimage.metrics import structural_similarity

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fesf_fed.config import DataConfig
from fesf_fed.data import load_dataset, stratified_split
from fesf_fed.data.duplicates import group_members

SIZE = 64
PREFILTER = 0.85
SSIM_LEVEL = 0.9


def _unit_rows(images: np.ndarray) -> np.ndarray:
    rows = images.reshape(len(images), -1).astype(np.float64)
    rows -= rows.mean(axis=1, keepdims=True)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def near_duplicates(grey: np.ndarray, mirrored: bool) -> np.ndarray:
    """Pairs ``(i, j)``, ``i != j``, with SSIM >= 0.9 (against ``j`` mirrored too, if asked)."""
    pairs = []
    rows = _unit_rows(grey)
    orientations = [(grey, rows)] + ([(grey[:, :, ::-1], _unit_rows(grey[:, :, ::-1]))] if mirrored else [])
    for others, other_rows in orientations:
        close = rows @ other_rows.T >= PREFILTER
        for i, j in zip(*np.nonzero(np.triu(close, 1))):
            if structural_similarity(grey[i], others[j], data_range=255) >= SSIM_LEVEL:
                pairs.append((i, j))
    return np.unique(np.array(pairs, np.int64).reshape(-1, 2), axis=0)


def leaked(pairs: np.ndarray, train: np.ndarray, test: np.ndarray, count: int) -> int:
    """Test images with a near-duplicate in ``train``."""
    in_train, in_test = np.zeros(count, bool), np.zeros(count, bool)
    in_train[train], in_test[test] = True, True
    bad = np.zeros(count, bool)
    for a, b in (pairs.T, pairs.T[::-1]):
        bad[a[in_test[a] & in_train[b]]] = True
    return int(bad.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder with one sub-folder per class")
    parser.add_argument("--seeds", type=int, default=5, help="split seeds 0 .. N-1 (default %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.4)
    parser.add_argument("--no-mirrored", dest="mirrored", action="store_false", help="count only unflipped copies")
    args = parser.parse_args()

    start = time.perf_counter()
    data = load_dataset(DataConfig(source="folder", path=args.folder.resolve(), image_size=SIZE))
    loaded = time.perf_counter() - start
    grey = data.images.astype(np.float64).mean(axis=1).round().astype(np.uint8)
    pairs = near_duplicates(grey, args.mirrored)
    groups = group_members(data.groups) if data.groups is not None else []
    print(
        f"{args.folder}: {len(data)} images at {SIZE} px, loaded and grouped in {loaded:.1f} s; "
        f"{len(groups)} near-duplicate groups of 2+ images hold {sum(len(g) for g in groups)} images "
        f"(largest {', '.join(str(len(g)) for g in groups[:3])}); "
        f"{len(pairs)} pairs with SSIM >= {SSIM_LEVEL}{' (mirrored included)' if args.mirrored else ''}"
    )
    print("seed | test images | with a near-duplicate in train: random split | grouped split (default)")
    for seed in range(args.seeds):
        old = stratified_split(data.labels, args.test_fraction, seed)
        new = stratified_split(data.labels, args.test_fraction, seed, data.groups)
        old_leaks, new_leaks = (leaked(pairs, train, test, len(data)) for train, test in (old, new))
        print(
            f"{seed} | {len(old[1])} / {len(new[1])} | {old_leaks} ({100 * old_leaks / len(old[1]):.1f} %) | "
            f"{new_leaks} ({100 * new_leaks / len(new[1]):.1f} %)"
        )


if __name__ == "__main__":
    main()
