"""``fesf-client``: join a hospital to the federation as one Flower SuperNode.

In order, so that every problem shows up as one line before Flower starts:

1. check the flags and the site's key (a kit's ``auth.pub`` names the site it is for);
2. load the site's config and data and build (or reuse) its surrogates, with a
   progress bar, so the first round does not wait on IQEM;
3. reach the SuperLink (a bounded number of tries) and check its TLS certificate
   against ``--root-certificates``;
4. run ``flower-supernode`` with node config ``site``, ``data-dir`` and ``site-config``.
   Flower's SuperNode leaves when the SuperLink stops (``fesf-server run`` stops it
   after each run); the client then waits for the SuperLink to return and joins again,
   like the service it is, until SIGINT/SIGTERM (or, with ``--once``, right away).
"""

import argparse
import json
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fesf_fed.build import build_surrogates
from fesf_fed.cli import print_build
from fesf_fed.deployment.pki import check_site_name, key_site
from fesf_fed.deployment.processes import FlowerProcess, flower_executable, free_port, port_open, split_address
from fesf_fed.errors import ConfigError, FesfError, run_command
from fesf_fed.federation.protocol import SiteNodeConfig

from .site import deployed_site_config

UNREGISTERED = "the SuperLink refused this site's key: it is not registered; send auth.pub to the server operator"
#: A SuperLink that has just started registers the sites' keys within seconds: a key it
#: refuses is tried this many times, this many seconds apart, before that is final.
KEY_TRIES, KEY_WAIT = 3, 5.0


def _existing_file(path: Path | None, flag: str, hint: str) -> Path | None:
    if path is None:
        return None
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: no such file; {hint}")
    return path


def check_auth_key(path: Path, site: str) -> None:
    """Refuse a private key Flower cannot use, or one whose kit names another site."""
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"--auth-key {path}: not an unencrypted OpenSSH private key ({exc}); use auth.key from your site kit"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--auth-key {path}: Flower needs an ECDSA key (ssh-keygen -t ecdsa -b 384)")
    public = path.with_suffix(".pub")
    if public.is_file() and (named := key_site(public)) is not None and named != site:
        raise ConfigError(
            f"--site {site}: the key {path} was made for site {named!r}; use --site {named} or {site}'s kit"
        )


def _existing_path(value: Path | None, flag: str) -> str | None:
    """``value`` as an absolute path (from the working directory) that exists and Flower's parser can carry."""
    if value is None:
        return None
    path = value.expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{flag} {path}: does not exist; check the path (relative paths start here)")
    if '"' in str(path):  # Flower's node-config parser has no escape for it
        raise ConfigError(f"{flag} {path}: contains a double quote; rename or link it")
    return str(path)


def node_config(args: argparse.Namespace) -> SiteNodeConfig:
    """The SuperNode's node config: who this site is and where its data and config are (absolute paths)."""
    if args.config is None and args.data_dir is None:
        raise ConfigError("--data-dir: give the site's image folder (or --config with a data section)")
    return SiteNodeConfig(
        site=args.site,
        data_dir=_existing_path(args.data_dir, "--data-dir"),
        site_config=_existing_path(args.config, "--config"),
        hosts_dir=_existing_path(args.hosts_dir, "--hosts-dir"),
        device=args.device,
    )


def _node_config_argument(config: SiteNodeConfig) -> str:
    # Flower parses node config as TOML values; a JSON string is a valid TOML basic string
    # (backslashes escaped; double quotes are refused in node_config).
    return " ".join(f"{key}={json.dumps(value)}" for key, value in config.to_node_config().items())


def reach_superlink(host: str, port: int, retries: int, wait: float) -> None:
    """Connect to ``host:port``, trying ``retries`` times with growing waits; one-line error if all fail."""
    for attempt in range(1, retries + 1):
        problem = port_open(host, port)
        if problem is None:
            return
        if attempt < retries:
            print(f"SuperLink {host}:{port} not reachable ({problem}); try {attempt + 1}/{retries} in {wait:.0f} s")
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
    raise FesfError(
        f"--superlink {host}:{port}: not reachable after {retries} tries ({problem}); "
        "check the address, your firewall, and that fesf-server is running"
    )


def check_certificate(host: str, port: int, root_certificates: Path) -> None:
    """Complete a TLS handshake with the SuperLink, verifying it against ``root_certificates``."""
    try:
        context = ssl.create_default_context(cafile=str(root_certificates))
    except ssl.SSLError as exc:
        raise ConfigError(f"--root-certificates {root_certificates}: not a PEM CA certificate ({exc.reason})") from None
    try:
        with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as exc:
        raise FesfError(
            f"--root-certificates {root_certificates}: the SuperLink at {host}:{port} is not verified by it "
            f"({exc.verify_message}); use the ca.crt from your site kit, and the host name its certificate was made for"
        ) from None
    except ssl.SSLError as exc:
        raise FesfError(
            f"--superlink {host}:{port}: TLS handshake failed ({exc.reason}); is the server running without TLS "
            "(then both sides need --insecure)?"
        ) from None
    except OSError as exc:
        raise FesfError(
            f"--superlink {host}:{port}: no TLS handshake ({exc.strerror or exc}); is this the SuperLink's address?"
        ) from None


class SupernodeFailure:
    """Reads ``flower-supernode`` output and names why it cannot join, in one line.

    Flower reports a fatal error as a block, ``Exit Code: N``, the reasons, then a
    ``For more information`` link, and may keep running afterwards. The block's most
    specific reason wins.
    """

    _REASONS = (
        ("code: 2004", UNREGISTERED),
        (
            "Invalid SuperNode authentication",
            (
                "the SuperLink rejected this site's signature: the key is not registered, or this machine's clock "
                "is more than a few seconds off (check NTP)"
            ),
        ),
        ("CERTIFICATE_VERIFY_FAILED", "the SuperLink's TLS certificate is not trusted; pass your kit's ca.crt"),
        ("Unable to parse the private key", "Flower cannot read --auth-key; use auth.key from your site kit"),
    )

    def __init__(self) -> None:
        self.exit_code: str | None = None
        self.reason: str | None = None

    def __call__(self, line: str) -> str | None:
        if "Exit Code:" in line:
            self.exit_code = line.rsplit("Exit Code:", 1)[1].strip()
        elif self.exit_code is not None:
            self.reason = self.reason or next((text for marker, text in self._REASONS if marker in line), None)
            if "For more information" in line:
                return (
                    self.reason or f"flower-supernode failed (Flower exit code {self.exit_code}); see its output above"
                )
        return None


def supernode_command(args: argparse.Namespace, config: SiteNodeConfig) -> list[str]:
    command = [flower_executable("flower-supernode"), "--superlink", args.superlink]
    if args.insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(args.root_certificates)]
        command += ["--auth-supernode-private-key", str(args.auth_key)]
    command += ["--node-config", _node_config_argument(config)]
    # Two sites on one machine (the loopback rehearsal) must not share the local Runtime API port.
    command += ["--port", str(args.runtime_port or free_port())]
    # No --max-retries: once joined, a site waits for the SuperLink to come back, like the service it is.
    return command


def _check_flags(args: argparse.Namespace) -> None:
    check_site_name(args.site)
    if args.retries < 1 or args.retry_wait <= 0:
        raise ConfigError("--retries must be >= 1 and --retry-wait > 0")
    if args.insecure and (args.root_certificates or args.auth_key):
        raise ConfigError("--insecure: cannot be combined with --root-certificates or --auth-key; choose one")
    if not args.insecure:
        if args.root_certificates is None or args.auth_key is None:
            raise ConfigError(
                "--root-certificates and --auth-key are required (ca.crt and auth.key from your site kit); "
                "--insecure turns TLS and authentication off"
            )
        args.root_certificates = _existing_file(args.root_certificates, "--root-certificates", "use your kit's ca.crt")
        args.auth_key = _existing_file(args.auth_key, "--auth-key", "use your kit's auth.key")
        check_auth_key(args.auth_key, args.site)


def _wait_for_return(host: str, port: int, wait: float, stop: threading.Event) -> None:
    while not stop.is_set() and port_open(host, port) is not None:
        stop.wait(wait)


def run(args: argparse.Namespace) -> int:
    host, port = split_address(args.superlink, "--superlink")
    _check_flags(args)
    config = node_config(args)
    print_build(build_surrogates(deployed_site_config(config), progress=not args.quiet))
    reach_superlink(host, port, args.retries, args.retry_wait)
    if not args.insecure:
        check_certificate(host, port, args.root_certificates)
    stop = threading.Event()
    stopping: list[int] = []
    supernodes: list[FlowerProcess] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        stop.set()
        for supernode in supernodes:
            supernode.failed.set()  # wakes the wait below

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        refused, joined = 0, False
        while not stop.is_set():
            print(f"Site {args.site}: joining the federation at {args.superlink}", flush=True)
            supernodes[:] = [FlowerProcess(supernode_command(args, config), sink=sys.stdout, watch=SupernodeFailure())]
            if stop.is_set():  # a signal that came before the SuperNode was in the list
                supernodes[0].failed.set()
            try:
                status = supernodes[0].wait_for_failure_or_exit()
            finally:
                supernodes[0].stop()
            if stop.is_set():
                break
            failure = supernodes[0].failure
            # Before a first join a refused key is soon final; after one, the server is restarting and
            # registering sites, which can take a while with many of them.
            if failure == UNREGISTERED and (joined or (refused := refused + 1) < KEY_TRIES):
                print(f"Site {args.site}: key refused; the server may still be registering sites, trying again")
                stop.wait(KEY_WAIT)
                continue
            if failure is not None:
                raise FesfError(f"site {args.site}: {failure}")
            if status:
                raise FesfError(f"site {args.site}: flower-supernode exited with status {status}; see its output above")
            refused, joined = 0, True
            # Flower's SuperNode leaves when the SuperLink stops, e.g. after fesf-server's run.
            if args.once:
                print(f"Site {args.site}: the SuperLink closed the connection; --once given, so stopping")
                return 0
            print(f"Site {args.site}: the SuperLink closed the connection; waiting for it to come back", flush=True)
            _wait_for_return(host, port, args.retry_wait, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"Site {args.site}: stopped ({signal.Signals(stopping[0]).name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fesf-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--site", required=True, help="this site's name, as in its key kit (e.g. A)")
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the consortium's SuperLink")
    parser.add_argument("--config", type=Path, help="site config (YAML); see configs/")
    parser.add_argument("--data-dir", type=Path, help="image folder, one sub-folder per class (config field data.path)")
    parser.add_argument("--hosts-dir", type=Path, help="folder of host images (config field hosts.path)")
    parser.add_argument(
        "--root-certificates", type=Path, metavar="CA.CRT", help="the CA that signed the SuperLink's certificate"
    )
    parser.add_argument(
        "--auth-key", type=Path, metavar="AUTH.KEY", help="this site's private key (SuperNode authentication)"
    )
    parser.add_argument("--device", help="auto, cpu or cuda:N (config field device)")
    parser.add_argument(
        "--insecure", action="store_true", help="no TLS, no authentication: for a closed test network only"
    )
    parser.add_argument(
        "--retries", type=int, default=5, help="tries to reach the SuperLink before giving up (default 5)"
    )
    parser.add_argument(
        "--retry-wait", type=float, default=2.0, help="seconds before the second try, doubling (default 2)"
    )
    parser.add_argument(
        "--runtime-port", type=int, help="local port of the SuperNode's Runtime API (default: a free one)"
    )
    parser.add_argument(
        "--once", action="store_true", help="stop when the SuperLink closes, instead of waiting for the next run"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fesf-client``; user errors print one line and exit with status 2."""
    args: Any = build_parser().parse_args(argv)
    return run_command(
        lambda: run(args), "interrupted: built surrogates are kept; run the same command again to resume"
    )


if __name__ == "__main__":
    sys.exit(main())
