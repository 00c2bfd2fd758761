"""``fesf-server``: the consortium side of a deployment.

``fesf-server certs`` makes the consortium's CA, the SuperLink's TLS certificate and
one key pair per site (:mod:`fesf_fed.deployment.pki`).

``fesf-server run`` starts a Flower SuperLink with TLS and SuperNode authentication
(insecure only with ``--insecure``), registers the public key of every site in the
site-keys folder, submits the FESF run with ``flwr run`` and streams its progress
until it ends, then stops the SuperLink. The run folder is written as in simulation,
to ``$FESF_HOME/runs/<run-name>/``: the run's ``run-name``, which ``fesf-server run``
sets from the date and time unless ``--run-config`` gives one (or ``resume``); its
``summary.json`` gives the result. The ServerApp is told which SuperNode each site's
key was registered as, and refuses a node that claims another site's name.

``fesf-server check`` validates run settings as the ServerApp will, before anything
starts (``make federate`` runs it first). ``fesf-server runs`` lists the runs in
``$FESF_HOME/runs`` with how each stands (a run whose server died shows as stopped
unexpectedly, with its resume command); ``fesf-server status [RUN]`` says it of one run,
by default the one written to last, and exits 0 only if it finished with every site
(``make federate`` runs it after ``flwr run``, which does not report how a run ended). ``fesf-server stop-local`` stops the SuperLink
that ``flwr run .`` started for a local simulation and left running (``make stop``),
found by its Flower home, never by name.
"""

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from fesf_fed.atomic import atomic_writer
from fesf_fed.deployment.pki import check_site_name, make_consortium_keys
from fesf_fed.deployment.processes import FlowerProcess, flower_env, flower_executable, split_address, wait_for_port
from fesf_fed.errors import INTERRUPTED, ConfigError, FesfError, run_command
from fesf_fed.federation.run_summary import SUMMARY_FILE, RunSummary
from fesf_fed.federation.settings import RUN_NAME
from fesf_fed.home import fesf_home, private_folder

from .liveness import HEARTBEAT_SECONDS, STALE_SECONDS, resume_hint
from .local_superlink import local_superlink_log, stop_local_superlink
from .run_config import check_run_config
from .run_store import describe_run, mark_stopped, newest_run, run_exists, runs_folder, stored_runs

#: Names the operator's own commands use to reach the SuperLink on its host.
LOCAL_HOSTS = ("localhost", "127.0.0.1")
_CONNECTION = "fesf"


def _run_certs(args: argparse.Namespace) -> int:
    hosts = list(dict.fromkeys([*args.host, *LOCAL_HOSTS]))
    keys = make_consortium_keys(args.out, hosts, args.site, days=args.days)
    print(f"CA:           {keys.ca_certificate} (keep {keys.root / 'ca' / 'ca.key'} offline)")
    print(f"server:       {keys.server_folder}/ (copy to the SuperLink host; valid for {', '.join(hosts)})")
    for site in args.site:
        print(f"site {site + ':':<7} {keys.site_folder(site)}/ (copy to site {site} over a secure channel)")
    return 0


def site_keys(folder: Path) -> dict[str, Path]:
    """The ``<site>.pub`` files of ``folder`` by site name."""
    if not folder.is_dir():
        raise ConfigError(f"--site-keys {folder}: no such folder; make it with fesf-server certs")
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            keys[check_site_name(path.stem)] = path
        except ConfigError as exc:
            raise ConfigError(f"--site-keys {path}: the file name must be <site>.pub; {exc}") from None
    if not keys:
        raise ConfigError(f"--site-keys {folder}: holds no <site>.pub file; make them with fesf-server certs")
    return keys


def _tls_files(folder: Path) -> dict[str, Path]:
    files = {name: folder / name for name in ("ca.crt", "server.pem", "server.key")}
    for path in files.values():
        if not path.is_file():
            raise ConfigError(f"--certificates {folder}: {path.name} is missing; make it with fesf-server certs")
    return files


def _write_connection(flwr_home: Path, address: str, root_certificates: Path | None) -> None:
    # The operator's flwr CLI reaches this SuperLink as the connection "fesf"; its own
    # FLWR_HOME keeps the user's Flower configuration untouched.
    lines = ["[superlink]", f'default = "{_CONNECTION}"', "", f"[superlink.{_CONNECTION}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates}"')
    with atomic_writer(flwr_home / "config.toml") as stream:
        stream.write(("\n".join(lines) + "\n").encode())


def register_site(key: Path, site: str, env: dict[str, str]) -> int:
    """Register a site's public key with the running SuperLink; return its SuperNode id."""
    result = subprocess.run(
        [flower_executable("flwr"), "supernode", "register", str(key), _CONNECTION, "--name", site, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        reply = json.loads(result.stdout)
    except json.JSONDecodeError:
        reply = {}
    if not reply.get("success"):
        output = (result.stdout + result.stderr).strip().splitlines()
        reason = reply.get("error-message") or (output[-1].strip(" │") if output else "no output")
        raise FesfError(
            f"site key {key}: the SuperLink did not register it ({reason}); "
            "it must be a P-384 OpenSSH public key that no other site uses"
        )
    return int(reply["node-id"])


def _app_folder(path: Path | None) -> Path:
    folder = (path or Path(__file__).resolve().parents[1]).resolve()
    if not (folder / "pyproject.toml").is_file():
        raise ConfigError(f"--app {folder}: no pyproject.toml; name the FESF-Fed checkout (the Flower app folder)")
    return folder


def new_run_name(now: datetime | None = None) -> str:
    """A name for a new run's folder from the local date and time, e.g. ``2026-11-30_140503``.

    A name that a folder in ``$FESF_HOME/runs`` has already gets ``-2``, ``-3``, ...
    """
    base = f"{now or datetime.now():%Y-%m-%d_%H%M%S}"
    name, number = base, 1
    while run_exists(name):
        number += 1
        name = f"{base}-{number}"
    return name


def _run_run(args: argparse.Namespace) -> int:
    host, port = split_address(args.address, "--address")
    app = _app_folder(args.app)
    # Before the SuperLink starts and keys are registered: a bad setting costs a second, not a start-up.
    settings = check_run_config(app, [args.run_config] if args.run_config else [], simulated=False)
    # The run's folder: given (a new run's run-name, or the run to resume), else named here.
    given = settings.resume or settings.run_name
    run_name = given or new_run_name()
    if args.insecure and (args.certificates or args.site_keys):
        raise ConfigError("--insecure: cannot be combined with --certificates or --site-keys; choose one")
    if not args.insecure and args.certificates is None:
        raise ConfigError("--certificates: name the server folder made by fesf-server certs (or pass --insecure)")
    tls = None if args.insecure else _tls_files(args.certificates.expanduser().resolve())
    keys: dict[str, Path] = {}
    if not args.insecure:
        keys = site_keys((args.site_keys or args.certificates / "site-keys").expanduser().resolve())
    flwr_home = private_folder(fesf_home() / "server" / "flower")
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    _write_connection(flwr_home, f"{local}:{port}", tls["ca.crt"] if tls else None)
    env = flower_env(FLWR_HOME=str(flwr_home))

    command = [flower_executable("flower-superlink"), "--host", host, "--port", str(port)]
    if tls is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(tls["ca.crt"]), "--ssl-certfile", str(tls["server.pem"])]
        command += ["--ssl-keyfile", str(tls["server.key"]), "--enable-supernode-auth"]
    command.append("--disable-runtime-dependency-installation")
    children: list[FlowerProcess] = []  # stopped in reverse order, whatever happens
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.append(FlowerProcess(command, env=env, sink=sys.stdout if args.verbose else None))
        wait_for_port(local, port, children[0], timeout=60)
        print(
            f"SuperLink listening on {host}:{port} ({'insecure' if tls is None else 'TLS, SuperNode authentication'})"
        )
        if host not in LOCAL_HOSTS:
            # Flower 1.42 serves its Control API (submit runs, register nodes) on the sites' port, unauthenticated.
            print(
                f"warning: anyone who reaches {host}:{port} can use Flower's Control API; expose only the Fleet "
                "API to the sites (deploy/nginx/fleet-only.conf, see deploy/README.md)"
            )
        nodes = {site: register_site(key, site, env) for site, key in keys.items()}
        for site, node in nodes.items():
            print(f"registered site {site} as SuperNode {node}")
        return _submit(args, app, env, nodes, children, run_name, named=not given)
    except KeyboardInterrupt:
        signal_name = signal.Signals(stopping[0]).name if stopping else "SIGINT"
        if run_exists(run_name):
            print(f"stopped ({signal_name}); {resume_hint(run_name)}")
        else:
            print(f"stopped ({signal_name}) before the run {run_name} began")
        return INTERRUPTED
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan the SuperLink.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()
        if stopping and run_exists(run_name):
            try:
                mark_stopped(run_name)  # its ServerApp went with the SuperLink, maybe before it could say so
            except sqlite3.Error as exc:
                print(f"warning: run {run_name} could not be recorded as stopped: its store is damaged ({exc})")
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _written(path: Path) -> int | None:
    """When ``path`` was last written (ns), or None when it is missing."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _submit(
    args: argparse.Namespace,
    app: Path,
    env: dict[str, str],
    nodes: dict[str, int],
    children: list[FlowerProcess],
    run_name: str,
    named: bool,
) -> int:
    """Submit the run with ``flwr run`` and stream it to its end; report its result from its summary.

    ``run_name`` is the run's folder in ``$FESF_HOME/runs``; ``named``: it was chosen here, and the
    run config gets it as ``run-name``.
    """
    ours = [f'run-name="{run_name}"'] if named else []
    if nodes:
        count = len(nodes)
        ours.append(f'site-nodes="{" ".join(f"{site}={node}" for site, node in nodes.items())}"')
        ours += [f"min-available-nodes={count}", f"min-train-nodes={count}", f"min-evaluate-nodes={count}"]
    command = [flower_executable("flwr"), "run", str(app), _CONNECTION, "--stream"]
    command += ["--run-config", " ".join(ours)] if ours else []
    command += ["--run-config", args.run_config] if args.run_config else []
    path = runs_folder() / run_name / SUMMARY_FILE
    before = _written(path)  # a resumed run's summary is there already: it must be rewritten
    children.append(FlowerProcess(command, env=env, sink=sys.stdout))
    status = children[-1].wait_for_failure_or_exit()
    if status or _written(path) in (None, before):
        raise FesfError(
            f"the run did not finish (flwr run exited with status {status}) and did not write {path}; "
            "see the output above"
        )
    summary = RunSummary.read(path)
    if summary.status == "finished" and summary.final is not None:
        print(f"Run finished ({summary.status}): {summary.final.headline()}; run folder {path.parent}")
        return 0
    figures = f"; test {summary.final.headline()}" if summary.final else ""
    print(f"Run ended: {describe_run(path.parent)[1]}{figures}; run folder {path.parent}")
    return 1


def _run_check(args: argparse.Namespace) -> int:
    settings = check_run_config(_app_folder(args.app), [args.run_config] if args.run_config else [])
    print(f"Run settings are valid: mode {settings.mode}, model {settings.model}, strategy {settings.strategy}")
    return 0


def _run_runs(args: argparse.Namespace) -> int:
    folder = runs_folder()
    runs = stored_runs(folder)
    if not runs:
        print(f"No runs in {folder}")
    for path in runs:
        print(describe_run(path)[1])
    return 0


def _run_status(args: argparse.Namespace) -> int:
    folder = runs_folder()
    if args.name is None:
        path = newest_run(folder)
        if path is None and args.since is None:
            raise ConfigError(f"no runs in {folder}; is FESF_HOME the one the runs were written to?")
        if path is None or (args.since is not None and (path / "store.sqlite").stat().st_mtime < args.since):
            print(f"no run was written to {folder} since the run was started: it did not begin; see the output above")
            return 1
    else:
        if not (RUN_NAME.fullmatch(args.name) and run_exists(args.name)):
            raise ConfigError(f"run {args.name!r}: not in {folder}; fesf-server runs lists them")
        path = folder / args.name
    state, line = describe_run(path)
    if args.since is not None:
        # The command that ran it has returned: a run still live by its store has lost its server,
        # which its heartbeat shows within STALE_SECONDS.
        deadline = time.monotonic() + STALE_SECONDS + HEARTBEAT_SECONDS
        while state.live and time.monotonic() < deadline:
            time.sleep(1.0)
            state, line = describe_run(path)
    print(line)
    return 0 if state.status == "finished" else 1


def _run_stop_local(args: argparse.Namespace) -> int:
    log_file = local_superlink_log(args.flwr_home)
    stopped = stop_local_superlink(args.flwr_home)
    if stopped:
        print(f"Stopped the local SuperLink (PID {', '.join(map(str, stopped))}) of {log_file.parent.parent}")
    else:
        print(f"No local SuperLink of {log_file.parent.parent} is running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fesf-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    certs = commands.add_parser("certs", help="make the CA, the SuperLink certificate and site key pairs")
    certs.add_argument("--out", type=Path, required=True, help="output folder (existing files are kept)")
    certs.add_argument(
        "--host", action="append", required=True, help="a name or IP sites use to reach the SuperLink (repeatable)"
    )
    certs.add_argument("--site", action="append", default=[], help="a site name (repeatable)")
    certs.add_argument("--days", type=int, default=825, help="certificate validity in days (default 825)")
    certs.set_defaults(run=_run_certs)

    run = commands.add_parser("run", help="start the SuperLink, register the sites and run the federation")
    run.add_argument("--certificates", type=Path, help="folder with ca.crt, server.pem, server.key")
    run.add_argument("--site-keys", type=Path, help="folder of <site>.pub keys (default: CERTIFICATES/site-keys)")
    run.add_argument(
        "--address", default="0.0.0.0:9092", help="HOST:PORT the SuperLink listens on (default 0.0.0.0:9092)"
    )
    run.add_argument(
        "--run-config", help="run settings, as flwr run takes them: 'num-server-rounds=5 model=\"resnet34\"'"
    )
    run.add_argument("--app", type=Path, help="the FESF-Fed Flower app folder (default: this installation's checkout)")
    run.add_argument(
        "--insecure", action="store_true", help="no TLS, no SuperNode authentication: closed test networks only"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show the SuperLink's own log")
    run.set_defaults(run=_run_run)

    check = commands.add_parser(
        "check", help="validate run settings (and simulated sites' configs) before `flwr run` (make federate)"
    )
    check.add_argument("--run-config", help="run settings, as flwr run takes them")
    check.add_argument(
        "--app", type=Path, help="the FESF-Fed Flower app folder (default: this installation's checkout)"
    )
    check.set_defaults(run=_run_check)

    runs = commands.add_parser("runs", help="list the runs in $FESF_HOME/runs, one line each, with how each stands")
    runs.set_defaults(run=_run_runs)

    status = commands.add_parser(
        "status", help="one run in one line; exit 0 only if it finished with every site (make federate runs it)"
    )
    status.add_argument("name", nargs="?", metavar="RUN", help="the run's name (default: the run written to last)")
    status.add_argument(
        "--since",
        type=float,
        metavar="EPOCH",
        help="for scripts, right after the flwr run they started at EPOCH (seconds): the run written to last must "
        "be newer, and one still running by its store is given the heartbeat's 20 s to show it stopped",
    )
    status.set_defaults(run=_run_status)

    stop_local = commands.add_parser(
        "stop-local", help="stop the local SuperLink that `flwr run` left running for this FLWR_HOME (make stop)"
    )
    stop_local.add_argument("--flwr-home", type=Path, help="Flower's home (default: $FLWR_HOME, else ~/.flwr)")
    stop_local.set_defaults(run=_run_stop_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fesf-server``; user errors print one line and exit with status 2."""
    args: Any = build_parser().parse_args(argv)
    return run_command(lambda: args.run(args), "interrupted")


if __name__ == "__main__":
    sys.exit(main())
