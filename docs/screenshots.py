"""Take the screenshots of the dashboard in docs/ from the runs in a folder.

Run from the repository after the default federation and its plaintext twin::

    make federate && make federate RUN_CONFIG="mode='plaintext'" && make stop
    .venv/bin/python docs/screenshots.py            # reads $FESF_HOME/runs (~/.fesf/runs)

It serves the folder with ``fesf-dashboard`` and saves the runs list, the newest
surrogate run's page and that run compared with the newest plaintext run.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.dashboard.runs import list_runs
from server.run_store import runs_folder
from tests.browser import chromium, dashboard

DOCS = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=runs_folder(), help="folder of runs (default: $FESF_HOME/runs)")
    args = parser.parse_args()
    finished = [run for run in list_runs(args.runs) if run.status == "finished"]
    surrogate = next((run.name for run in finished if run.mode != "plaintext"), None)
    plaintext = next((run.name for run in finished if run.mode == "plaintext"), None)
    if surrogate is None or plaintext is None:
        print(f"error: {args.runs} needs a finished surrogate run and a finished plaintext run", file=sys.stderr)
        return 2
    pages = {
        "dashboard-runs.png": "/",
        "dashboard-run.png": f"/runs/{surrogate}",
        "dashboard-compare.png": f"/compare?runs={plaintext},{surrogate}",
    }
    with dashboard(args.runs) as served, chromium(width=1400, height=900) as browser:
        for name, path in pages.items():
            browser.page.goto(served.url + path)
            browser.page.wait_for_selector("main h1")
            browser.page.wait_for_timeout(2500)  # plots draw after the page's first data arrives
            browser.page.screenshot(path=str(DOCS / name), full_page=True)
            print(f"{DOCS / name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
