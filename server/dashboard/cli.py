"""``fesf-dashboard``: serve the evaluation dashboard and the diagnosis service over a run folder.

It binds 127.0.0.1 unless told otherwise; any other address needs an access token
(``FESF_DASHBOARD_TOKEN``). It answers only requests whose ``Host`` header names it
(``--host``, ``localhost`` on loopback, and ``--allowed-hosts``). The run store and the
privacy audits are only ever read.
"""

import argparse
import os
import sys
from pathlib import Path

import waitress

from fesf_fed.audit.result import audits_folder
from fesf_fed.deployment.diagnose import TOKEN_VARIABLE
from fesf_fed.device import select_device
from fesf_fed.errors import ConfigError, run_command

from ..run_store import runs_folder
from .access import check_token, parse_allowed_hosts
from .app import create_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fesf-dashboard",
        description="Watch and compare federated runs, and diagnose surrogates with a run's global model.",
    )
    parser.add_argument("--runs", type=Path, default=None, help="folder of runs (default: $FESF_HOME/runs)")
    parser.add_argument(
        "--audits", type=Path, default=None, help="folder of privacy audits (default: $FESF_HOME/audits)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        metavar="NAME[,NAME...]",
        help="host names requests may address besides --host (and localhost on loopback): the name a proxy "
        "forwards or users type, e.g. dash.example.org; requests for any other host get 400",
    )
    parser.add_argument(
        "--resize", action="store_true", help="resize uploads to the model's image size instead of refusing them"
    )
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MiB (default 10)")
    parser.add_argument("--device", default="cpu", help="where the diagnosis service runs models: cpu, auto or cuda:N")
    parser.add_argument("--threads", type=int, default=8, help="requests served at once (default 8)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    runs = (args.runs or runs_folder()).expanduser().resolve()
    audits = (args.audits or audits_folder()).expanduser().resolve()
    # From the environment, not a flag: that keeps it out of ``ps`` and shell history.
    token = os.environ.get(TOKEN_VARIABLE) or None
    if problem := check_token(args.host, token):
        raise ConfigError(problem)
    try:
        allowed_hosts = [] if args.allowed_hosts is None else parse_allowed_hosts(args.allowed_hosts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: give a port between 1 and 65535")
    if args.max_upload_mb <= 0 or args.threads < 1:
        raise ConfigError("--max-upload-mb must be positive and --threads at least 1")
    if runs.exists() and not runs.is_dir():
        raise ConfigError(f"--runs {runs}: not a folder; name the folder that holds the run folders")
    if not runs.exists():
        print(f"note: {runs} does not exist yet; runs appear once a federation starts", file=sys.stderr)
    app = create_app(
        runs,
        audits=audits,
        token=token,
        resize=args.resize,
        max_upload=int(args.max_upload_mb * 2**20),
        device=select_device(args.device),
        host=args.host,
        allowed_hosts=allowed_hosts,
    )
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    address = f"http://{shown_host}:{args.port}/"
    print(f"FESF-Fed dashboard on {address} (runs: {runs}); Ctrl-C stops it", flush=True)
    if token:
        print(
            f"open {address}?token=${TOKEN_VARIABLE} once in the browser; scripts send Authorization: Bearer",
            flush=True,
        )
    try:
        waitress.serve(
            app.server,
            host=args.host,
            port=args.port,
            threads=args.threads,
            ident="fesf-dashboard",
            # Waitress refuses a longer body itself (413), as it arrives or from its Content-Length,
            # before it buffers it to a temporary file; the app's own check gives the one-line reason.
            max_request_body_size=int(args.max_upload_mb * 2**20) + 2**20,
            channel_timeout=60,  # a client that declares a body and sends nothing is dropped
            # Behind a TLS proxy on this machine (deploy/nginx/dashboard.conf), requests are
            # HTTPS: the token cookie is then marked Secure.
            trusted_proxy="127.0.0.1",
            trusted_proxy_headers={"x-forwarded-proto"},
            _quiet=True,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another --port"
        ) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _serve(args), "dashboard stopped")


if __name__ == "__main__":
    sys.exit(main())
