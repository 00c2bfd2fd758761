"""Make FESF-Fed's built-in demo set from the official PneumoniaMNIST file (run once; the result is committed).

    python docs/make_demo_data.py ../shared/data/medmnist/pneumoniamnist.npz

Writes ``fesf_fed/data/demo/pneumoniamnist-demo.json``: a seeded random subset of 800
normal and 800 pneumonia chest X-rays (28 x 28, uint8) from the pooled train, val and test
splits, zlib-compressed and base64-encoded inside JSON (Flower ships an app's .json files
to its SuperNodes, not .npz), with its SHA-256 and the attribution that CC BY 4.0 asks for.
"""

import base64
import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np

PER_CLASS = 800
SEED = 0
OUT = Path(__file__).resolve().parents[1] / "fesf_fed" / "data" / "demo" / "pneumoniamnist-demo.json"


def main(source: str) -> None:
    with np.load(source) as archive:
        images = np.concatenate([archive[f"{split}_images"] for split in ("train", "val", "test")])
        labels = np.concatenate([archive[f"{split}_labels"].reshape(-1) for split in ("train", "val", "test")])
    rng = np.random.default_rng(SEED)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), PER_CLASS, replace=False) for k in (0, 1)]))
    pixels = np.ascontiguousarray(images[keep], dtype=np.uint8)
    record = {
        "name": "PneumoniaMNIST demo subset",
        "classes": ["normal", "pneumonia"],
        "shape": list(pixels.shape),
        "labels": labels[keep].astype(int).tolist(),
        "sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "pixels": base64.b64encode(zlib.compress(pixels.tobytes(), 9)).decode(),
        "licence": "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
        "attribution": (
            "PneumoniaMNIST, MedMNIST v2: J. Yang, R. Shi, D. Wei, Z. Liu, L. Zhao, B. Ke, H. Pfister, B. Ni, "
            "'MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification', "
            "Scientific Data 10, 41 (2023); from the chest X-rays of D. S. Kermany et al., Cell 172(5), 2018"
        ),
        "changes": (
            f"a seeded random subset (numpy default_rng({SEED})) of {PER_CLASS} images per class from the pooled "
            "official train, val and test splits; pixels unchanged; stored zlib-compressed in base64"
        ),
    }
    OUT.write_text(json.dumps(record) + "\n")
    print(f"{OUT}: {len(keep)} images, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1])
