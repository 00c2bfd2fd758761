"""Same-domain hosts against phantom hosts, IQEM on against off: the paper's Tables 1-3 on one site's data.

For one dataset config it builds the site's surrogates four ways, on the same site
images (the dataset's public host part, ``data.public_hosts``, set aside in every variant):

- **same-domain**: ``hosts.source: dataset``, the public part as the host bank;
- **phantom**: generated head phantoms (``hosts.phantom_count`` of them), the variant;
- each with IQEM on (the defaults) and off (``iqem.steps: 0``: x_su is x_sy).

For each it records the Table 2/3 figures of the build (SSIM and PSNR of host and
plaintext against x_sy, x_su and x_su' on the quality sample of the test split) and
what IQEM did (steps, why it stopped), and trains a central smallcnn (the
reproduction's schedule) on x_sy, x_su and x_su', and on the plaintext once: the
Table 1 retention (macro-F1 over plaintext's). Finished variants are kept in
``--results`` (JSON, written atomically) and reused, so an interrupted run resumes.

    OMP_NUM_THREADS=1 python benchmarks/host_domain.py configs/br35h.yaml --image-size 64 \\
        --results docs/host-domain.json
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # fesf_fed: run from anywhere

import argparse
import json
import time
from typing import Any

import numpy as np
from PIL import Image
from privacy_frontier import central_test  # the same central smallcnn (40 epochs) as the frontier

from fesf_fed.atomic import atomic_writer, write_json
from fesf_fed.build import build_surrogates
from fesf_fed.config import SiteConfig, load_config
from fesf_fed.data import load_dataset_parts
from fesf_fed.errors import ConfigError, run_command
from fesf_fed.home import fesf_home

#: Share of each dataset set aside as public hosts, in every variant (so all train on the same images).
PUBLIC_HOSTS = 0.1
#: The variants: site-config overrides on top of the dataset config.
VARIANTS: dict[str, dict[str, Any]] = {
    "same-domain": {"hosts.source": "dataset"},
    "same-domain-iqem-off": {"hosts.source": "dataset", "iqem.steps": 0},
    "phantom": {"hosts.source": "phantom", "hosts.phantom_count": 16},
    "phantom-iqem-off": {"hosts.source": "phantom", "hosts.phantom_count": 16, "iqem.steps": 0},
}
#: The modes trained per variant (x_sy does not depend on IQEM: trained with it on only).
MODES = {"same-domain": ("x_sy", "x_su", "x_su_prime"), "phantom": ("x_sy", "x_su", "x_su_prime")}


def one_class_bank(config: SiteConfig, name: str, folder: Path) -> Path:
    """Write the public host part's images of class ``name`` as PNGs under ``folder`` (once): a one-class bank."""
    if (folder / "done").exists():
        return folder
    public = load_dataset_parts(config.data).public_hosts
    assert public is not None  # _config sets data.public_hosts
    if name not in public.classes:
        raise ConfigError(f"--host-class {name!r}: not a class of {config.data.path} ({', '.join(public.classes)})")
    label = public.classes.index(name)
    for index in np.flatnonzero(public.labels == label):
        pixels = np.moveaxis(public.images[index], 0, -1)
        target = folder / f"{public.ids[index].replace('/', '_')}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(target) as stream:
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(stream, format="PNG")
    (folder / "done").write_text(name)
    return folder


def _config(path: Path, image_size: int, overrides: dict[str, Any]) -> SiteConfig:
    return load_config(
        path, command_line={"data.image_size": image_size, "data.public_hosts": PUBLIC_HOSTS, **overrides}
    )


def _train(config: SiteConfig, mode: str, seed: int) -> dict[str, float]:
    test = central_test(config, mode, seed)
    answered = {column for row in test.confusion for column, count in enumerate(row) if count}
    return {
        "f1": float(test.f1),
        "accuracy": float(test.accuracy),
        "balanced_accuracy": float(test.balanced_accuracy),
        "one_class": len(answered) == 1,
    }


def measure(config: SiteConfig, modes: tuple[str, ...], seed: int) -> dict[str, Any]:
    """One variant: its build's quality figures and IQEM summary, and a central model per mode."""
    start = time.perf_counter()
    build = build_surrogates(config, progress=False)
    built = time.perf_counter()
    return {
        "quality": {
            pair["pair"]: {"ssim": pair["ssim_mean"], "psnr": pair["psnr_mean"]} for pair in build.quality["pairs"]
        },
        "iqem": {key: value for key, value in build.manifest["iqem"].items() if key != "checks"},
        "hosts": build.manifest["hosts"]["count"],
        "models": {mode: _train(config, mode, seed) for mode in modes},
        "seconds_build": built - start,
        "seconds_training": time.perf_counter() - built,
    }


#: The paper's Table 2/3 SSIMs for the one dataset it shares with us: host vs x_su', host vs x_sy, x_pl vs x_su'.
PAPER_SSIM = {"br35h": (0.8280, 0.4477, 0.1352)}


def _cell(model: dict[str, Any], plaintext: dict[str, Any]) -> str:
    flag = " (one class)" if model["one_class"] else ""
    return f"{model['f1']:.3f} ({model['f1'] / plaintext['f1']:.2f}); {model['accuracy']:.3f} / {model['balanced_accuracy']:.3f}{flag}"


def tables(results: dict[str, Any]) -> str:
    """The Table 2/3 and Table 1 comparisons of every measured dataset, as Markdown."""
    quality = [
        "| dataset | hosts | IQEM | SSIM host-x_su' | SSIM host-x_sy | SSIM host-x_su | SSIM x_pl-x_su' | SSIM x_pl-x_sy "
        "| PSNR host-x_su' / host-x_sy | paper SSIM host-x_su' / host-x_sy / x_pl-x_su' | IQEM steps (best) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    utility = [
        "| dataset | hosts | plaintext macro-F1 (acc / bal. acc) | x_sy: macro-F1 (retention); acc / bal. acc | x_su | x_su' | x_su', IQEM off |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        dataset = name.rsplit("-", 1)[0]
        paper = PAPER_SSIM.get(dataset)
        plain = entry["plaintext"]
        for label, variant in entry["variants"].items():
            q = variant["quality"]
            host_su_prime, plain_su_prime = q["host vs x_su'"], q["x_pl vs x_su'"]
            iqem = variant["iqem"]
            steps = "off" if not iqem.get("steps") else f"{iqem['steps']} ({iqem['best']['step']})"
            quality.append(
                f"| {name} | {label.removesuffix('-iqem-off')} | {'off' if label.endswith('-iqem-off') else 'on'} "
                f"| {host_su_prime['ssim']:.3f} | {q['host vs x_sy']['ssim']:.3f} | {q['host vs x_su']['ssim']:.3f} "
                f"| {plain_su_prime['ssim']:.3f} | {q['x_pl vs x_sy']['ssim']:.3f} "
                f"| {host_su_prime['psnr']:.1f} / {q['host vs x_sy']['psnr']:.1f} "
                f"| {'–' if paper is None else ' / '.join(f'{value:.3f}' for value in paper)} | {steps} |"
            )
        for hosts in ("same-domain", "phantom", *(name for name in entry["variants"] if name.endswith("-only"))):
            on, off = entry["variants"].get(hosts), entry["variants"].get(f"{hosts}-iqem-off")
            if on is None:
                continue
            models = on["models"]
            utility.append(
                f"| {name} | {hosts} | {plain['f1']:.3f} ({plain['accuracy']:.3f} / {plain['balanced_accuracy']:.3f}) | "
                + " | ".join(
                    _cell(models[mode], plain) if mode in models else "–" for mode in ("x_sy", "x_su", "x_su_prime")
                )
                + f" | {'–' if off is None else _cell(off['models']['x_su_prime'], plain)} |"
            )
    return "\n".join(quality) + "\n\n" + "\n".join(utility) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, nargs="?", help="the dataset's site config, e.g. configs/br35h.yaml")
    parser.add_argument("--tables", type=Path, nargs="+", metavar="JSON", help="print the tables of results files")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="the central training's seed")
    parser.add_argument(
        "--host-class",
        metavar="CLASS",
        help="also measure a bank of the public part's images of this class only (e.g. the healthy one)",
    )
    parser.add_argument(
        "--results", type=Path, help="JSON file the variants are kept in (resumed); required with a config"
    )
    args = parser.parse_args(argv)

    def command() -> int:
        if args.tables:
            merged: dict[str, Any] = {}
            for path in args.tables:
                merged.update(json.loads(path.read_text()))
            print(tables(merged))
            return 0
        if args.config is None or args.results is None:
            parser.error("name a site config and --results, or --tables")
        chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
        results: dict[str, Any] = json.loads(args.results.read_text()) if args.results.exists() else {}
        entry = results.setdefault(f"{args.config.stem}-{args.image_size}px", {"variants": {}})
        if "plaintext" not in entry:
            entry["plaintext"] = _train(_config(args.config, args.image_size, {}), "plaintext", args.seed)
            write_json(args.results, results)
        variants = {name: VARIANTS[name] for name in chosen}
        if args.host_class:
            base = _config(args.config, args.image_size, {})
            folder = fesf_home() / "host-banks" / f"{args.config.stem}-{args.image_size}px-{args.host_class}"
            bank = one_class_bank(base, args.host_class, folder)
            variants[f"same-domain-{args.host_class}-only"] = {"hosts.source": "folder", "hosts.path": str(bank)}
        for name, overrides in variants.items():
            if name in entry["variants"]:
                continue
            config = _config(args.config, args.image_size, overrides)
            modes = MODES.get(name, ("x_su_prime",))
            entry["variants"][name] = measure(config, modes, args.seed)
            # Another process may have added other datasets meanwhile: merge into what is on disk.
            on_disk = json.loads(args.results.read_text()) if args.results.exists() else {}
            on_disk[f"{args.config.stem}-{args.image_size}px"] = entry
            results = on_disk
            write_json(args.results, results)
            variant = entry["variants"][name]
            f1 = {mode: f"{model['f1'] / entry['plaintext']['f1']:.3f}" for mode, model in variant["models"].items()}
            print(
                f"{args.config.stem} {name}: retention {f1}; quality "
                + "; ".join(f"{pair} {figures['ssim']:.3f}" for pair, figures in variant["quality"].items()),
                flush=True,
            )
        return 0

    return run_command(command, "interrupted: finished variants are kept; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
