"""Run settings checked before Flower starts (`fesf-server check`, `make federate`, `fesf-server run`)."""

import re

import pytest

from fesf_fed.data import SPLIT_VERSION
from fesf_fed.errors import ConfigError
from fesf_fed.federation.run_summary import RunSummary
from fesf_fed.federation.settings import parse_run_settings
from server.federation import run_federation
from server.run_config import check_run_config
from server.run_store import RunFolder, StoredRun, runs_folder
from tests.simulation import REPO, run_config


def test_the_defaults_are_valid():
    settings = check_run_config(REPO, [])
    assert (settings.mode, settings.model, settings.num_server_rounds) == ("x_su_prime", "smallcnn", 20)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mode='nonsense'", "run config mode: Input should be 'plaintext', 'x_sy', 'x_su' or 'x_su_prime'"),
        ("bogus=1", "--run-config: Key 'bogus' is not present in the main dictionary"),
        ("mode=[", "--run-config: The provided configuration string is in an invalid format"),
        ("central-eval='/nowhere/test.yaml'", "run config central-eval: /nowhere/test.yaml: config file not found"),
        ("pretrained-weights='/nowhere/w.pth'", "run config pretrained-weights: /nowhere/w.pth not found"),
        ("resume='12345'", "run config resume: no run '12345' in"),
    ],
)
def test_what_the_serverapp_would_refuse_late_is_refused_first(given, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_run_config(REPO, [given])


def _stored_run(name: str, **info) -> None:
    """A run stored as the federation stores one as it begins: its settings and its sites' split version."""
    settings, site_defaults = parse_run_settings(run_config())
    run = RunFolder(name)
    config = {**settings.model_dump(by_alias=True), **{f"site.{key}": value for key, value in site_defaults.items()}}
    run.set_info(config=config, split_version=SPLIT_VERSION, **info)
    run.close()


def test_a_resume_that_would_change_the_mode_is_refused_first():
    _stored_run("earlier", status="stopped")
    with pytest.raises(ConfigError, match="run config mode: run earlier used 'x_su_prime', not 'plaintext'"):
        check_run_config(REPO, ["resume='earlier' mode='plaintext'"])
    assert check_run_config(REPO, ["resume='earlier' num-server-rounds=30"]).resume == "earlier"


class _Interrupted:
    """A grid at whose roll call the operator presses Ctrl-C."""

    def get_node_ids(self) -> list[int]:
        raise KeyboardInterrupt


def test_a_resumed_run_no_longer_shows_the_error_of_the_attempt_that_failed():
    _stored_run("failed-before", status="failed", error="an old error")
    settings, site_defaults = parse_run_settings(run_config(resume="failed-before"))
    with pytest.raises(KeyboardInterrupt):
        run_federation(_Interrupted(), settings, site_defaults, "77")  # type: ignore[arg-type]  # a Grid look-alike
    stored = StoredRun(runs_folder() / "failed-before")
    info = stored.info()
    stored.close()
    assert info["status"] == "stopped"
    assert info["error"] is None


def test_run_name_names_the_run_folder_and_a_taken_name_is_refused_in_one_line():
    settings, site_defaults = parse_run_settings(run_config(**{"run-name": "trial-7"}))
    assert check_run_config(REPO, ["run-name='trial-7'"]).run_name == "trial-7"
    with pytest.raises(KeyboardInterrupt):
        run_federation(_Interrupted(), settings, site_defaults, "77")  # type: ignore[arg-type]  # a Grid look-alike
    # The folder has the run's name, not Flower's run id; the summary has its Flower run id.
    assert [path.name for path in runs_folder().iterdir()] == ["trial-7"]
    summary = RunSummary.read(runs_folder() / "trial-7" / "summary.json")
    assert (summary.name, summary.status, summary.flower_run) == ("trial-7", "stopped", "77")

    taken = (
        f"run config run-name: a run 'trial-7' exists already in {runs_folder()}; "
        "choose another run-name, or continue that run with resume='trial-7'"
    )
    with pytest.raises(ConfigError) as refused:
        check_run_config(REPO, ["run-name='trial-7'"])  # before Flower starts
    assert str(refused.value) == taken
    with pytest.raises(ConfigError) as refused:
        run_federation(None, settings, site_defaults, "78")  # type: ignore[arg-type]  # refused before any grid use
    assert str(refused.value) == taken
    assert RunSummary.read(runs_folder() / "trial-7" / "summary.json") == summary  # the run is left as it was


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("run-name='../up'", "run config run-name: use up to 128 letters, digits, '.', '_' and '-'"),
        ("run-name='a' resume='b'", "run config run-name: 'a' names a new run and resume 'b' continues one"),
    ],
)
def test_a_run_name_that_cannot_name_a_new_folder_is_refused(given, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_run_config(REPO, [given])
