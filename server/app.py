"""The Flower ServerApp: read the run config, run the federation, leave a run folder behind."""

from datetime import UTC, datetime
from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fesf_fed.errors import ConfigError
from fesf_fed.federation.settings import RUN_NAME, parse_run_settings

from .federation import RunOutcome, run_federation
from .run_store import RunFolder, check_new_run_name

app = ServerApp()


def _refused_run_name(run_config: dict, flower_run: str) -> str:
    """The folder of a run whose settings were refused: its ``run-name`` if valid and new, else Flower's run id.

    So that ``fesf-server run``, which names the run, finds the refusal in the run's summary; a
    run of that name, or the run to resume, is left as it was.
    """
    name = run_config.get("run-name")
    if not (isinstance(name, str) and RUN_NAME.fullmatch(name)):
        return flower_run
    try:
        check_new_run_name(name)
    except ConfigError:
        return flower_run
    return name


def _refuse(run_name: str, run_config: dict, error: ConfigError) -> None:
    """Leave a failed run in the store, so that the dashboard and scripts see the refusal too."""
    run = RunFolder(run_name)
    try:
        run.set_info(
            status="failed",
            error=str(error),
            config=dict(run_config),
            started=datetime.now(UTC).isoformat(),
        )
        run.write_summary(final=None)
    finally:
        run.close()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp: :func:`run_app`, whose outcome Flower would ignore."""
    run_app(grid, context)


def run_app(grid: Grid, context: Context) -> RunOutcome:
    """Train the configured model across the run's sites; see ``$FESF_HOME/runs/<run-name or run-id>/``.

    :func:`server.simulation.simulate` calls it for the outcome, which it hands to its caller.
    """
    try:
        settings, site_defaults = parse_run_settings(context.run_config)
    except ConfigError as exc:
        # First thing, before any site prepares. Flower adds a traceback and `flwr run` still
        # exits 0 (it does not report a run's status): this line is the one to read.
        log(ERROR, "error: %s", exc)
        _refuse(_refused_run_name(dict(context.run_config), str(context.run_id)), dict(context.run_config), exc)
        raise
    return run_federation(grid, settings, site_defaults, str(context.run_id))
