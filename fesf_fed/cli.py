"""The ``fesf`` command: build a site's surrogates, show their quality, audit their privacy, check data and host banks, diagnose scans."""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fesf_fed.audit.report import figure_cells, verdict_label
from fesf_fed.audit.result import ATTACKS, AuditReport
from fesf_fed.audit.run import run_audit
from fesf_fed.build import SiteBuild, build_surrogates, site_cache
from fesf_fed.config import DUPLICATE_DISTANCE, DataConfig, SiteConfig, load_config, parse_assignments
from fesf_fed.data import ImageSet, SkippedFile, check_source
from fesf_fed.data.decode import MIN_SIDE
from fesf_fed.data.duplicates import group_labels, group_members, near_duplicate_pairs
from fesf_fed.deployment.diagnose import predict_folder, write_predictions
from fesf_fed.errors import ConfigError, DataError, FesfError, run_command
from fesf_fed.host_bank import BANK_MANIFEST, HostBankCheck, check_host_bank, prepare_host_bank

console = Console()


def _command_line(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the options set, by dotted name (relative paths: from the working directory)."""
    overrides: dict[str, Any] = {}
    for flag, field in (
        ("site", "site"),
        ("device", "device"),
        ("data", "data.path"),
        ("source", "data.source"),
        ("hosts", "hosts.path"),
        ("host_source", "hosts.source"),
        ("image_size", "data.image_size"),
    ):
        if getattr(args, flag, None) is not None:
            overrides[field] = getattr(args, flag)
    overrides.update(parse_assignments(args.set, "pipeline.beta=0.3"))
    return overrides


def _site_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="site config (YAML); default: the built-in phantom demo")
    parser.add_argument("--site", help="site name (config field site)")
    parser.add_argument("--data", help="data folder, .npz or .csv (config field data.path)")
    parser.add_argument("--source", help="phantom, folder, medmnist or csv (config field data.source)")
    parser.add_argument("--hosts", help="folder of host images (config field hosts.path)")
    parser.add_argument("--host-source", help="folder, dataset or phantom (config field hosts.source)")
    parser.add_argument("--image-size", type=int, help="square image size in pixels (data.image_size)")
    parser.add_argument("--device", help="auto, cpu or cuda:N")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override any config field")


def _site_config(args: argparse.Namespace) -> SiteConfig:
    return load_config(args.config, command_line=_command_line(args))


def _skipped_table(title: str, skipped: list[dict[str, str]] | list[SkippedFile], column: str = "reason") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("file")
    table.add_column(column)
    for entry in skipped:
        path, reason = (entry["path"], entry["reason"]) if isinstance(entry, dict) else (entry.path, entry.reason)
        # File names are data, not markup: "[x].png" must print as it is.
        table.add_row(escape(path), escape(reason))
    return table


def _quality_table(quality: dict[str, Any]) -> Table:
    table = Table(
        title=f"Surrogate quality (paper Tables 2 and 3; {quality['images']} test images)", title_justify="left"
    )
    for column in ("pair", "SSIM", "PSNR (dB)", "LPIPS"):
        table.add_column(column, justify="left" if column == "pair" else "right")
    for pair in quality["pairs"]:
        lpips = "n/a" if pair["lpips_mean"] is None else f"{pair['lpips_mean']:.4f} ± {pair['lpips_std']:.4f}"
        table.add_row(
            pair["pair"],
            f"{pair['ssim_mean']:.4f} ± {pair['ssim_std']:.4f}",
            f"{pair['psnr_mean']:.2f} ± {pair['psnr_std']:.2f}",
            lpips,
        )
    if quality["lpips_unavailable"]:
        table.caption = f"LPIPS unavailable: {quality['lpips_unavailable']}"
    return table


def print_build(build: SiteBuild) -> None:
    """Print a build's counts per class, skipped files, quality table and timing."""
    manifest = build.manifest
    counts = Table(title=f"Site {manifest['site']}: surrogates", title_justify="left")
    splits = [split for split in ("train", "val", "test") if split in manifest["splits"]]
    counts.add_column("class")
    for split in splits:
        counts.add_column(split, justify="right")
    for name in manifest["classes"]:
        counts.add_row(name, *(str(manifest["splits"][split]["counts"][name]) for split in splits))
    counts.add_row("total", *(str(len(manifest["splits"][split]["labels"])) for split in splits))
    console.print(counts)
    if manifest["skipped"]:
        console.print(_skipped_table(f"Skipped files ({len(manifest['skipped'])})", manifest["skipped"]))
    if manifest["hosts"]["skipped"]:
        console.print(_skipped_table("Skipped host images", manifest["hosts"]["skipped"]))
    console.print(_quality_table(build.quality))
    size = "x".join(str(n) for n in manifest["image_shape"])
    timing = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in build.timings.items())
    state = "reused from the cache (no work done)" if build.reused else f"built ({timing})"
    console.print(
        f"{state} in {build.seconds:.1f} s on {manifest['device']}; images {size}; "
        f"{manifest['hosts']['count']} hosts; IHM window covers {100 * manifest['mask_coverage']['hide']:.0f}% "
        f"of the spectrum\nstages kept: {', '.join(manifest['outputs'])}\ncache: {build.cache.directory}"
    )


def _run_surrogates(args: argparse.Namespace) -> None:
    build = build_surrogates(_site_config(args), progress=not args.quiet)
    print_build(build)


def _run_quality(args: argparse.Namespace) -> None:
    config = _site_config(args)
    if not site_cache(config).complete:
        raise FesfError(
            f"no surrogates built for site {config.site} with this config; run `fesf surrogates` with the same options first"
        )
    console.print(_quality_table(build_surrogates(config, progress=not args.quiet).quality))


def _audit_table(report: AuditReport) -> Table:
    table = Table(title=f"privacy audit {report.name}", title_justify="left")
    for column in ("attack", "result", "baselines", "verdict"):
        table.add_column(column, overflow="fold")
    for result in report.attacks:
        label = f"[red]{verdict_label(result)}[/red]" if result.leaks else verdict_label(result)
        verdict = f"{label}: {result.verdict}"
        table.add_row(result.attack, figure_cells(result.figures), figure_cells(result.baselines), verdict)
    return table


def _run_audit(args: argparse.Namespace) -> None:
    config = _site_config(args)
    name = args.name or (args.config.stem if args.config else "demo")
    attacks = [attack.strip() for attack in args.attack.split(",")] if args.attack else None
    report, folder = run_audit(config, name, attacks, progress=not args.quiet, report=console.print)
    console.print(_audit_table(report))
    console.print(f"{report.seconds / 60:.1f} min; report: {folder / 'privacy.md'}")


def _run_predict(args: argparse.Namespace) -> None:
    config = _site_config(args)
    result = predict_folder(
        config, args.images.resolve(), args.run_name, args.server, args.root_certificates, progress=not args.quiet
    )
    rounds = ", ".join(str(number) for number in sorted({prediction.round for prediction in result.predictions}))
    console.print(
        f"run {args.run_name}: {len(result.predictions)} scans diagnosed from their {result.run.mode} surrogates "
        f"by the global model of round {rounds}"
    )
    table = Table()
    for column in ("file", "class", "probability"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for prediction in result.predictions:
        table.add_row(prediction.file, prediction.label, f"{prediction.probabilities[prediction.label]:.4f}")
    console.print(table)
    if result.skipped:
        console.print(_skipped_table(f"Skipped files ({len(result.skipped)})", result.skipped))
    if args.output:
        write_predictions(args.output, result)
        console.print(f"predictions written to {args.output}")


def _print_host_check(check: HostBankCheck) -> None:
    console.print(
        f"host bank: {check.source}, {check.location}\n{check.count} hosts decoded at {check.size} px, "
        f"{check.channels} channel(s); fingerprint sha256 {check.fingerprint[:12]}"
    )
    if check.skipped:
        console.print(_skipped_table(f"Skipped host files ({len(check.skipped)})", check.skipped))
    if check.copies:
        table = Table(
            title=f"Hosts that are copies of the site's own images ({check.copied_hosts}): a build refuses them",
            title_justify="left",
        )
        for column in ("host", "site image", "how"):
            table.add_column(column)
        for copy in check.copies:
            table.add_row(copy.host, copy.image, copy.how)
        console.print(table)
    else:
        console.print("no host is a copy of a site image")


def _run_hosts_check(args: argparse.Namespace) -> None:
    check = check_host_bank(_site_config(args))
    _print_host_check(check)
    if not check.usable:
        raise DataError(
            f"{check.copied_hosts} host(s) are copies of site images; remove them, or run "
            "`fesf hosts prepare --out DIR` to write the bank without them"
        )


def _run_hosts_prepare(args: argparse.Namespace) -> None:
    check = prepare_host_bank(_site_config(args), args.out)
    _print_host_check(check)
    console.print(
        f"wrote {check.prepared} hosts to {args.out}, copies left out (provenance in {args.out / BANK_MANIFEST}); "
        f"use them with hosts.source folder, hosts.path {args.out}"
    )


def _data_config(args: argparse.Namespace) -> DataConfig:
    path = Path(args.path).resolve()
    source = args.source or ("medmnist" if path.suffix == ".npz" else "csv" if path.suffix == ".csv" else "folder")
    try:
        # Near-duplicates are found once, below, for the report; data.groups keeps the named ones.
        return DataConfig(
            source=source,
            path=path,
            image_size=args.image_size,
            group_duplicates=False,
            duplicate_distance=args.duplicate_distance,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"data check: {field + ': ' if field else ''}{error['msg']}") from None


#: Groups the data check lists by name, largest first, and file names shown per group.
_LISTED_GROUPS, _LISTED_FILES = 5, 4


def _group_classes(data: ImageSet, members: list[int]) -> str:
    counts = np.bincount(data.labels[members], minlength=len(data.classes))
    return escape(", ".join(f"{data.classes[label]}: {count}" for label, count in enumerate(counts) if count))


def _print_duplicates(data: ImageSet, distance: int) -> None:
    """The near-duplicate report: how many groups and images, and the largest groups' files."""
    groups = group_members(group_labels(len(data), near_duplicate_pairs(data.images, distance)))
    if not groups:
        console.print(f"no near-duplicates (perceptual hashes within {distance} of 64 bits, mirrored copies included)")
        return
    grouped = sum(len(members) for members in groups)
    table = Table(
        title=(
            f"Near-duplicates: {len(groups)} group(s) of 2+ images hold {grouped} of {len(data)} images "
            f"({100 * grouped / len(data):.0f}%); the split keeps each group on one side"
        ),
        title_justify="left",
        caption=f"perceptual hashes within {distance} of 64 bits (data.duplicate_distance), mirrored copies included",
    )
    for column in ("group", "images", "classes", "files"):
        table.add_column(column, justify="right" if column in ("group", "images") else "left")
    for number, members in enumerate(groups[:_LISTED_GROUPS], start=1):
        names = [data.ids[index] for index in members[:_LISTED_FILES]]
        more = f", … {len(members) - _LISTED_FILES} more" if len(members) > _LISTED_FILES else ""
        files = escape(", ".join(names) + more)
        table.add_row(str(number), str(len(members)), _group_classes(data, members.tolist()), files)
    console.print(table)


def _run_data_check(args: argparse.Namespace) -> None:
    """The whole report (counts, skipped files, warnings, groups), then status 2 if a build would refuse the data."""
    check = check_source(_data_config(args), progress=not args.quiet)
    data = check.data
    channels = "" if data is None else f", {data.images.shape[1]} channel(s)"
    console.print(escape(f"{args.path}: {sum(check.counts.values())} usable images{channels}"))
    table = Table()
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, count in check.counts.items():
        table.add_row(escape(name), str(count) if count else "[red]0: no usable image[/red]")
    console.print(table)
    if check.skipped:
        console.print(_skipped_table(f"Bad or skipped files ({len(check.skipped)})", check.skipped))
    else:
        console.print("no bad files")
    if check.warnings:
        title = f"Warnings ({len(check.warnings)}): these images load, but check that they are what you meant"
        console.print(_skipped_table(title, check.warnings, column="warning"))
    else:
        console.print(f"no warnings (no image under {MIN_SIDE} px a side, none 16-bit, palette or with transparency)")
    if data is not None and data.groups is not None:
        named = group_members(data.groups)
        console.print(
            f"named groups (the manifest's group column): {len(named)} of 2+ images hold "
            f"{sum(len(members) for members in named)} images"
        )
    if data is not None:
        _print_duplicates(data, args.duplicate_distance)
    if check.problem is not None:
        raise DataError(f"{args.path}: {check.problem} (the report above lists every problem)")


def build_parser() -> argparse.ArgumentParser:
    """The ``fesf`` argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="fesf", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    surrogates = commands.add_parser("surrogates", parents=[common], help="build (or reuse) a site's FESF surrogates")
    _site_arguments(surrogates)
    surrogates.set_defaults(run=_run_surrogates)

    quality = commands.add_parser(
        "quality", parents=[common], help="print the Table 2/3 quality figures of built surrogates"
    )
    _site_arguments(quality)
    quality.set_defaults(run=_run_quality)

    audit = commands.add_parser(
        "audit", parents=[common], help="attack the site's surrogates and updates; write privacy.json and privacy.md"
    )
    audit.add_argument("--name", help="the audit's folder in $FESF_HOME/audits (default: the config file's name)")
    audit.add_argument("--attack", metavar="A,B", help=f"run only these attacks: {', '.join(ATTACKS)}")
    _site_arguments(audit)
    audit.set_defaults(run=_run_audit)

    predict = commands.add_parser(
        "predict", parents=[common], help="diagnose scans with a run's global model, sending only their surrogates"
    )
    # dest: ``run`` is the subcommand's function.
    predict.add_argument(
        "--run", dest="run_name", metavar="RUN", required=True, help="the run whose global model diagnoses (its name)"
    )
    predict.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of scans (recursively)")
    predict.add_argument("--server", default="http://127.0.0.1:8050", help="fesf-dashboard's address (%(default)s)")
    predict.add_argument("--root-certificates", type=Path, metavar="FILE", help="CA bundle (PEM) for an HTTPS --server")
    predict.add_argument("--output", type=Path, metavar="FILE.csv", help="also write file, class, probabilities as CSV")
    _site_arguments(predict)
    predict.set_defaults(run=_run_predict)

    hosts = commands.add_parser("hosts", help="check or prepare a site's host bank")
    hosts_commands = hosts.add_subparsers(dest="hosts_command", required=True)
    hosts_check = hosts_commands.add_parser(
        "check", parents=[common], help="decode the bank, give its fingerprint, list copies of site images"
    )
    _site_arguments(hosts_check)
    hosts_check.set_defaults(run=_run_hosts_check)
    prepare = hosts_commands.add_parser(
        "prepare", parents=[common], help="write the bank's usable hosts, resized like the site's images, to a folder"
    )
    prepare.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new or empty folder")
    _site_arguments(prepare)
    prepare.set_defaults(run=_run_hosts_prepare)

    data = commands.add_parser("data", help="inspect a data source")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser(
        "check", parents=[common], help="count images per class, list bad files and near-duplicate groups"
    )
    check.add_argument("path", help="a folder with one sub-folder per class, a MedMNIST .npz or a CSV manifest")
    check.add_argument("--source", choices=["folder", "medmnist", "csv"], help="default: from the path")
    check.add_argument("--image-size", type=int, default=64, help="size to decode at (default 64)")
    check.add_argument(
        "--duplicate-distance",
        type=int,
        default=DUPLICATE_DISTANCE,
        help="most hash bits (of 64) near-duplicates differ in (data.duplicate_distance, default %(default)s)",
    )
    check.set_defaults(run=_run_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fesf``; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def command() -> int:
        args.run(args)
        return 0

    return run_command(command, "interrupted: finished work is kept; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
