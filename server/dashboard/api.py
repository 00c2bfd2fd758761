"""The dashboard's HTTP API: runs and their details as JSON, metric exports, and the diagnosis endpoint.

::

    GET  /api/runs                       the runs list
    GET  /api/runs/<run>                 a run's details (settings, sites, history, confusion matrix)
    GET  /api/runs/<run>/metrics.csv     every metric, one row per value
    GET  /api/runs/<run>/metrics.json    the same as JSON rows
    POST /api/runs/<run>/diagnose        body: a surrogate PNG -> predicted class and probabilities
"""

from dataclasses import asdict
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .diagnosis import DiagnosisError, DiagnosisService
from .runs import UnknownRun, UnreadableRun, details_json, list_runs, metric_rows, metrics_csv, read_details


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def api_blueprint(runs: Path, diagnosis: DiagnosisService) -> Blueprint:
    """The API routes, reading runs under ``runs`` and diagnosing with ``diagnosis``."""
    api = Blueprint("api", __name__, url_prefix="/api")

    def details(name: str):
        return read_details(runs, name)

    @api.get("/runs")
    def runs_list() -> Response:
        return jsonify([asdict(summary) for summary in list_runs(runs)])

    @api.get("/runs/<name>")
    def run(name: str) -> Response:
        return jsonify(details_json(details(name)))

    @api.get("/runs/<name>/metrics.csv")
    def export_csv(name: str) -> Response:
        return Response(
            metrics_csv(details(name).history),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="run-{name}-metrics.csv"'},
        )

    @api.get("/runs/<name>/metrics.json")
    def export_json(name: str) -> Response:
        response = jsonify(metric_rows(details(name).history))
        response.headers["Content-Disposition"] = f'attachment; filename="run-{name}-metrics.json"'
        return response

    @api.post("/runs/<name>/diagnose")
    def diagnose(name: str) -> Response | tuple[Response, int]:
        if request.mimetype != "image/png":
            return _error(
                415,
                "send the surrogate PNG as the request body with Content-Type: image/png "
                "(curl --data-binary @surrogate.png -H 'Content-Type: image/png' URL)",
            )
        # get_data keeps the body in memory (never a temporary file) and enforces MAX_CONTENT_LENGTH.
        return jsonify(diagnosis.diagnose(name, request.get_data(cache=False)))

    @api.route("/<path:rest>", methods=["GET", "POST"])
    def no_endpoint(rest: str) -> tuple[Response, int]:
        # Without this, the pages' catch-all route would answer a mistyped API address with HTML.
        return _error(404, f"no API endpoint /api/{rest}; see /api/runs")

    @api.errorhandler(UnknownRun)
    def unknown_run(exc: UnknownRun) -> tuple[Response, int]:
        return _error(404, str(exc))

    @api.errorhandler(UnreadableRun)
    def unreadable_run(exc: UnreadableRun) -> tuple[Response, int]:
        # One line in the log, no traceback: the run's files are damaged, not the dashboard.
        current_app.logger.error("%s %s: %s", request.method, request.path, exc)
        return _error(503, str(exc))

    @api.errorhandler(DiagnosisError)
    def refused(exc: DiagnosisError) -> tuple[Response, int]:
        if exc.status >= 500:
            current_app.logger.error("%s %s: %s", request.method, request.path, exc.message)
        return _error(exc.status, exc.message)

    @api.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        if exc.code == 413:
            limit = current_app.config["MAX_CONTENT_LENGTH"] / 2**20
            return _error(
                413, f"the upload is larger than {limit:g} MiB, this service's limit (fesf-dashboard --max-upload-mb)"
            )
        return _error(exc.code or 500, exc.description or exc.name)

    return api
