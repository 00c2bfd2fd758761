"""Fixtures shared by the test modules."""

from dataclasses import dataclass
from pathlib import Path

import pytest

# The real public datasets live beside the repository, never inside it (see its README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the repo")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def fesf_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FESF_HOME per test, so no test reads or writes the user's ~/.fesf."""
    home = tmp_path_factory.mktemp("fesf-home")
    monkeypatch.setenv("FESF_HOME", str(home))
    return home


#: Config overrides that make a whole build take about a second: tiny images, nets and training.
TINY_BUILD = {
    "data.image_size": 16,
    "data.phantom_per_class": 8,
    "hosts.phantom_count": 3,
    "iqem.steps": 3,
    "iqem.check_every": 1,
    "iqem.batch_size": 4,
    "iqem.base_channels": 4,
    "iqem.res_blocks": 1,
    "iqem.disc_channels": 4,
    "iqem.disc_layers": 1,
    "quality.max_images": 4,
    "pipeline.batch_size": 5,
    "device": "cpu",
}


def last_stored_round(folder: Path) -> int:
    """The last round the run in ``folder`` has stored: 0 before its first, or before its store exists.

    For tests that watch a run in another process.
    """
    from server.run_store import StoredRun  # imported here: it imports torch

    try:
        run = StoredRun(folder)
    except FileNotFoundError:
        return 0
    try:
        return run.last_round()
    finally:
        run.close()


@dataclass(frozen=True)
class CommandResult:
    """What a command run by a test gave: its exit status and output."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def fesf_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``fesf ARGS --quiet`` in this process (argument parsing to exit status), with tables 200 columns wide.

    The same code as the command, without a process and its torch import for each call.
    """
    import fesf_fed.cli as cli_module  # imported here: it imports torch

    monkeypatch.setattr(cli_module.console, "width", 200)
    capsys.readouterr()

    def run(*args: str) -> CommandResult:
        returncode = cli_module.main([*args, "--quiet"])
        captured = capsys.readouterr()
        return CommandResult(returncode, captured.out, captured.err)

    return run


@pytest.fixture
def tiny_build() -> dict[str, object]:
    """The overrides of TINY_BUILD, for tests that build surrogates."""
    return dict(TINY_BUILD)


@dataclass(frozen=True)
class FinishedRun:
    """A finished federation of ``tests.simulation.TINY_RUN``: 2 rounds, x_su', three simulated sites."""

    #: Its FESF_HOME: the runs folder and the sites' caches (trained IQEM generators included).
    home: Path
    #: Its run folder, ``home/runs/<run-id>``.
    folder: Path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One real tiny federation for the whole session, for the tests that only read a finished run.

    Shared, so never changed: a test that edits or adds runs copies the run folder first.
    """
    # Imported here: tests.simulation imports Flower, and this module.
    from tests.simulation import TINY_RUN, run_config, simulate

    home = tmp_path_factory.mktemp("finished-run-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FESF_HOME", str(home))
        simulate(run_config(**TINY_RUN))
    (folder,) = (home / "runs").iterdir()
    return FinishedRun(home, folder)
