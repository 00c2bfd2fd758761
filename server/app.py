"""The Flower ServerApp: read the run config, run the federation, leave a run folder behind."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fesf_fed.run_settings import parse_run_settings
from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train the configured model across the run's sites; see ``$FESF_HOME/runs/<run-id>/``."""
    settings, site_defaults = parse_run_settings(context.run_config)
    run_federation(grid, settings, site_defaults, str(context.run_id))
