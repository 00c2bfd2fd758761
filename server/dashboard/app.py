"""The dashboard as one Dash app: pages by address, refreshed while runs and audits change, plus the HTTP API."""

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import torch
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import DependencyException, PreventUpdate
from flask import current_app, jsonify

from fesf_fed.audit.result import REPORT_FILE, audits_folder

from ..liveness import heartbeat_stopped
from ..run_store import stored_runs
from .access import HostCheck, require_host, require_token, secure_headers
from .api import api_blueprint
from .audits import audit_folders, list_audits
from .diagnosis import DiagnosisError, DiagnosisService
from .pages import audits_page, compare_page, diagnose_section, message_page, run_page, runs_page, table
from .runs import RunDetails, UnknownRun, UnreadableRun, list_runs, read_details

#: How often an open page checks its runs for new rounds.
REFRESH_MS = 2000


def _run_name(pathname: str) -> str:
    return pathname.removeprefix("/runs/").strip("/")


def _compared(search: str | None) -> list[str]:
    names = parse_qs((search or "").lstrip("?")).get("runs", [""])[0]
    return [name for name in names.split(",") if name]


class _Pages:
    """Builds a page for an address, and says whether what it shows has changed since it was built."""

    def __init__(self, runs: Path, audits: Path) -> None:
        self.runs = runs
        self.audits = audits

    @staticmethod
    def _stamp(files: list[Path]) -> list[Any]:
        # By the run's (or audit's) folder name: the browser keeps this, and must not learn the server's paths.
        return [[path.parent.name, path.stat().st_mtime_ns if path.is_file() else None] for path in files]

    def _run_stamp(self, names: list[str]) -> list[Any]:
        # A run whose server died changes no file: its heartbeat going stale must redraw the page too.
        stamps = self._stamp([self.runs / name / "store.sqlite" for name in names])
        return [[*stamp, heartbeat_stopped(self.runs / name)] for stamp, name in zip(stamps, names)]

    def version(self, pathname: str, search: str | None) -> list[Any]:
        """What the page at this address depends on: the address and its runs' store (or audits' report) times."""
        if pathname == "/audits":
            return [
                pathname,
                search or "",
                self._stamp([folder / REPORT_FILE for folder in audit_folders(self.audits)]),
            ]
        if pathname.startswith("/runs/"):
            names = [_run_name(pathname)]
        elif pathname == "/compare":
            names = _compared(search)
        else:
            names = [path.name for path in stored_runs(self.runs)]
        return [pathname, search or "", self._run_stamp(names)]

    def details(self, name: str) -> RunDetails:
        return read_details(self.runs, name)

    def build(self, pathname: str, search: str | None) -> list[Any]:
        try:
            if pathname.startswith("/runs/"):
                return run_page(self.details(_run_name(pathname)))
            if pathname == "/compare":
                return compare_page([self.details(name) for name in _compared(search)])
        except UnknownRun as exc:
            return message_page("Unknown run", f"{exc}. The runs list shows every run there is.")
        except UnreadableRun as exc:
            # One line in the log (no traceback): the page is redrawn only when the store changes.
            current_app.logger.error("page %s: %s", pathname, exc)
            return message_page(f"Run {exc.name} cannot be read", f"{exc}.")
        if pathname in ("/", ""):
            return runs_page(list_runs(self.runs), str(self.runs))
        if pathname == "/audits":
            return audits_page(list_audits(self.audits), str(self.audits))
        return message_page("Not found", f"There is no page {pathname}; start from the runs list.")


def _diagnosis_view(result: dict[str, Any]) -> list[Any]:
    rows = [[name, f"{probability:.4f}"] for name, probability in result["probabilities"].items()]
    return [
        html.P(
            [
                "Predicted class: ",
                html.Strong(result["class"], id="diagnosis-class"),
                f" (global model after round {result['round']})",
            ]
        ),
        table(["class", "probability"], rows, "diagnosis-table"),
    ]


def create_app(
    runs: Path,
    *,
    audits: Path | None = None,
    token: str | None = None,
    resize: bool = False,
    max_upload: int = 10 * 2**20,
    device: torch.device | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
) -> Dash:
    """Build the dashboard.

    Parameters
    ----------
    runs : Path
        The folder of run folders (``$FESF_HOME/runs``); read only.
    audits : Path, optional
        The folder of audit folders (default ``$FESF_HOME/audits``); read only.
    token : str, optional
        Access token every request must carry (see :mod:`server.dashboard.access`).
    resize : bool
        Let the diagnosis service resize uploads to the model's input size instead of refusing them.
    max_upload : int
        Largest request body in bytes; larger uploads get 413.
    device : torch.device, optional
        Where the diagnosis service runs models (default: the CPU).
    host : str
        The address it listens on: requests must name it (or, on loopback, ``localhost``) in
        their ``Host`` header (see :class:`server.dashboard.access.HostCheck`).
    allowed_hosts : sequence of str
        More names requests may give in their ``Host`` header (``--allowed-hosts``).
    """
    pages = _Pages(runs, audits or audits_folder())
    diagnosis = DiagnosisService(runs, resize, device or torch.device("cpu"))
    app = Dash(
        __name__,
        title="FESF-Fed dashboard",
        update_title="",  # Dash's docs: None or "" leave the tab's title alone while callbacks run
        suppress_callback_exceptions=True,
        serve_locally=True,  # every script and style from this server: hospitals may have no internet
        assets_folder=str(Path(__file__).with_name("assets")),
    )
    app.server.config["MAX_CONTENT_LENGTH"] = max_upload
    app.server.json.sort_keys = False  # probabilities stay in the run's class order
    # The host check first: a request for another host gets no further, not even to the token check.
    require_host(app.server, HostCheck(host, allowed_hosts))
    if token:
        require_token(app.server, token)
    app.server.register_blueprint(api_blueprint(runs, diagnosis))
    # Dash refuses a script path outside its packages (e.g. /_dash-component-suites/../x) with this exception,
    # which would be a 500 with a traceback in the log: it is a request for nothing, so a 404.
    app.server.register_error_handler(DependencyException, lambda _exc: (jsonify(error="no such file"), 404))
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="tick", interval=REFRESH_MS),
            dcc.Store(id="shown"),
            dcc.Store(id="diagnose-shown"),
            html.Header(
                [
                    dcc.Link("FESF-Fed", href="/", className="brand"),
                    dcc.Link("Runs", href="/"),
                    dcc.Link("Audits", href="/audits"),
                ]
            ),
            html.Main([html.Div(id="page"), html.Div(id="diagnose-area")]),
        ]
    )

    @app.callback(
        Output("page", "children"),
        Output("shown", "data"),
        Input("url", "pathname"),
        Input("url", "search"),
        Input("tick", "n_intervals"),
        State("shown", "data"),
    )
    def render(pathname: str | None, search: str | None, _tick: int | None, shown: list[Any] | None):
        version = pages.version(pathname or "/", search)
        if version == shown:
            raise PreventUpdate  # nothing new: leave the page (and what the user is doing on it) alone
        return pages.build(pathname or "/", search), version

    @app.callback(
        Output("diagnose-area", "children"),
        Output("diagnose-shown", "data"),
        Input("shown", "data"),
        State("diagnose-shown", "data"),
    )
    def diagnose_area(shown: list[Any] | None, offered: list[Any] | None):
        # Apart from the page, and redrawn only when what it offers changes: a new round
        # must not clear a file being uploaded or the diagnosis shown.
        pathname = shown[0] if shown else "/"
        content, offer = [], None
        if pathname.startswith("/runs/"):
            try:
                details = pages.details(_run_name(pathname))
            except (UnknownRun, UnreadableRun):
                pass  # the page says why
            else:
                content = diagnose_section(details)
                offer = [pathname, details.summary.mode, details.has_model, details.input]
        if offer == offered:
            raise PreventUpdate
        return content, offer

    @app.callback(Output("compare-link", "href"), Input("compare-choice", "value"))
    def compare_link(chosen: list[str] | None) -> str:
        return "/compare?runs=" + ",".join(chosen or [])

    @app.callback(
        Output("diagnosis-result", "children"),
        Input("diagnose-upload", "contents"),
        State("url", "pathname"),
        prevent_initial_call=True,
    )
    def diagnose_upload(contents: str | None, pathname: str) -> Any:
        if not contents:
            raise PreventUpdate
        try:
            data = base64.b64decode(contents.partition(",")[2], validate=True)
            return _diagnosis_view(diagnosis.diagnose(_run_name(pathname), data))
        except binascii.Error:
            return html.P("The upload could not be read; choose the file again.", className="error")
        except DiagnosisError as exc:
            if exc.status >= 500:
                current_app.logger.error("diagnosis upload: %s", exc.message)
            return html.P(exc.message, className="error", id="diagnosis-error")

    # After every callback is defined: the policy allows Dash's inline scripts by their hashes.
    secure_headers(app.server, app.csp_hashes())
    return app
